//! Runbook files (`runbooks/*.toml`): named steps, each a module run under a
//! policy, ordered by `depends_on`.
//!
//! ```toml
//! name = "incident-digest"
//! description = "Summarise an incident log"
//!
//! [steps.collect]
//! module = "echo.wasm"          # a .wasm file next to the runbook, or sha256:<id>
//! policy = "reporter"           # optional; default: no capabilities at all
//! input = "line one\nline two"
//!
//! [steps.count]
//! module = "wordcount.wasm"
//! depends_on = ["collect"]
//! input = "{{collect}}"         # a dependency's output, spliced in as bytes
//!                               # ({{collect|trim}} drops surrounding whitespace)
//! retries = 2                   # attempts after the first failure
//! timeout = "5s"                # per attempt
//! ```
//!
//! Validation names the step and the field (and the line and column) of
//! every problem: an unknown key, a module or policy the host does not know,
//! a dependency that does not exist, a cycle, a template naming a step that
//! is not a dependency. A parsed file still refers to modules by the text
//! the author wrote; [`RunbookFile::resolve`] turns it into the
//! [`RunbookSpec`] stored with the claims, where every module is an id.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::Spanned;

use crate::ErrorKind;

/// Most attempts after the first a step may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Most steps in one runbook.
pub const MAX_STEPS: usize = 1000;
/// Largest rendered step input: what a `Run` request may carry by default
/// (`server.max_request_mb`, 16 MiB). A template is refused at validation
/// when its text plus every reference at [`MAX_STEP_OUTPUT`] could exceed
/// it, and a rendering over it fails the step (`invalid-request`), so a
/// runbook cannot make a host allocate without bound.
pub const MAX_STEP_INPUT: usize = 16 * 1024 * 1024;

use super::worker::MAX_STEP_OUTPUT;

/// Why a runbook file was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunbookError {
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file (or `<request>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A step's field is wrong.
    #[error("{file}:{line}:{column}: step `{step}`, field `{field}`: {message}")]
    Step {
        /// The file (or `<request>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The step.
        step: String,
        /// The field (`module`, `policy`, `depends_on`, `input`, ...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The dependencies form a cycle.
    #[error("{file}: steps {} depend on each other in a cycle", cycle.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The file (or `<request>`).
        file: String,
        /// The steps on the cycle, first repeated at the end.
        cycle: Vec<String>,
    },
    /// A step's input template could render larger than [`MAX_STEP_INPUT`].
    #[error(
        "{file}:{line}:{column}: step `{step}`, field `input`: {references} references to dependency outputs of up to {MAX_STEP_OUTPUT} bytes each (plus {text} bytes of text) could render {bound} bytes, over the {MAX_STEP_INPUT} a step's input may be"
    )]
    InputTooLarge {
        /// The file (or `<request>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The step.
        step: String,
        /// `{{...}}` references in the template.
        references: usize,
        /// Bytes of literal text.
        text: usize,
        /// The most the template could render.
        bound: u128,
    },
    /// The runbook as a whole is wrong (no steps, too many).
    #[error("{file}: {message}")]
    Whole {
        /// The file (or `<request>`).
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl RunbookError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    steps: BTreeMap<Spanned<String>, RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    module: Spanned<String>,
    policy: Option<Spanned<String>>,
    #[serde(default)]
    input: Option<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    timeout: Option<Spanned<String>>,
}

/// One step as written, with the spans its errors point at.
#[derive(Debug, Clone)]
pub struct StepFile {
    /// The module as written: a `.wasm` path relative to the runbook, or `sha256:<id>`.
    pub module: String,
    module_span: std::ops::Range<usize>,
    /// The policy name, if any.
    pub policy: Option<String>,
    policy_span: std::ops::Range<usize>,
    spec: StepSpec,
}

/// A parsed, structurally valid runbook file whose modules are not resolved yet.
#[derive(Debug, Clone)]
pub struct RunbookFile {
    /// Where it came from, for errors.
    pub file: String,
    /// The runbook's name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Steps by name.
    pub steps: BTreeMap<String, StepFile>,
    text: String,
}

/// A runbook ready to store: every module an id, every policy a name the
/// submitting host knows, the caller recorded so every host checks the
/// same identity against the step's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunbookSpec {
    /// The runbook's name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Who submitted it; steps run as this caller.
    pub caller: String,
    /// Steps by name.
    pub steps: BTreeMap<String, StepSpec>,
    /// The submitter's W3C trace context, so the steps, whichever host runs
    /// them, join the trace of the submission (absent when traces are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One step of a stored runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// The module id (sha256) once resolved; the text as written before.
    pub module: String,
    /// The policy name; `None` runs with no capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The input template (`{{step}}` splices a dependency's output).
    #[serde(default)]
    pub input: String,
    /// Steps that must complete first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Attempts after the first failure.
    #[serde(default)]
    pub retries: u32,
    /// Deadline per attempt, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl StepSpec {
    /// The step's timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// How many bytes [`StepSpec::render_input`] would produce, without
    /// producing them.
    pub fn rendered_len(&self, outputs: &BTreeMap<String, Vec<u8>>) -> u128 {
        template_parts(&self.input)
            .iter()
            .map(|part| match part {
                Part::Text(t) => t.len() as u128,
                Part::Ref(name, trim) => outputs.get(*name).map_or(0, |o| {
                    (if *trim { o.trim_ascii() } else { o }).len() as u128
                }),
                Part::Bad(_) => 0,
            })
            .sum()
    }

    /// The input with each `{{dependency}}` replaced by that step's output.
    /// A reference to a step missing from `outputs` renders as nothing;
    /// validation guarantees every reference is a dependency, and a step
    /// only runs once its dependencies completed.
    ///
    /// The size is computed before anything is allocated; over
    /// [`MAX_STEP_INPUT`] is an error (validation refuses templates that
    /// could get there; this guards specs stored by anything else).
    pub fn render_input(
        &self,
        outputs: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, InputTooLarge> {
        let size = self.rendered_len(outputs);
        if size > MAX_STEP_INPUT as u128 {
            return Err(InputTooLarge { size });
        }
        let mut out = Vec::with_capacity(size as usize);
        for part in template_parts(&self.input) {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Ref(name, trim) => {
                    if let Some(o) = outputs.get(name) {
                        out.extend_from_slice(if trim { o.trim_ascii() } else { o });
                    }
                }
                Part::Bad(_) => {}
            }
        }
        Ok(out)
    }
}

/// A step's input rendered larger than [`MAX_STEP_INPUT`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "the step's input would render {size} bytes, over the {MAX_STEP_INPUT} a step's input may be"
)]
pub struct InputTooLarge {
    /// The size it would have.
    pub size: u128,
}

enum Part<'a> {
    Text(&'a str),
    /// A dependency's output, and whether `|trim` asked for surrounding
    /// whitespace to go.
    Ref(&'a str, bool),
    /// A `{{...}}` that is not `name` or `name|trim`.
    Bad(&'a str),
}

/// Splits `{{name}}` references out of a template. `{{` without a closing
/// `}}` is text.
fn template_parts(template: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let inner = rest[open + 2..open + 2 + close].trim();
        parts.push(match inner.split_once('|') {
            None => Part::Ref(inner, false),
            Some((name, "trim")) => Part::Ref(name.trim(), true),
            Some(_) => Part::Bad(inner),
        });
        rest = &rest[open + 2 + close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    parts
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl RunbookFile {
    /// Reads and validates the runbook at `path`.
    pub fn load(path: &Path) -> Result<Self, RunbookError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunbookError::Whole {
            file: path.display().to_string(),
            message: format!("cannot be read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates runbook `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, RunbookError> {
        let raw: RawRunbook = toml::from_str(text).map_err(|e| {
            let (line, column) = crate::policy::line_column(text, e.span().unwrap_or(0..0).start);
            RunbookError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let whole = |message: String| RunbookError::Whole {
            file: file.to_string(),
            message,
        };
        if raw.name.get_ref().trim().is_empty() {
            return Err(whole("`name` is empty".into()));
        }
        if raw.steps.is_empty() {
            return Err(whole(
                "it has no steps; add a `[steps.<name>]` table".into(),
            ));
        }
        if raw.steps.len() > MAX_STEPS {
            return Err(whole(format!(
                "it has {} steps; at most {MAX_STEPS} are allowed",
                raw.steps.len()
            )));
        }
        let at =
            |span: std::ops::Range<usize>, step: &str, field: &'static str, message: String| {
                let (line, column) = crate::policy::line_column(text, span.start);
                RunbookError::Step {
                    file: file.to_string(),
                    line,
                    column,
                    step: step.to_string(),
                    field,
                    message,
                }
            };
        let names: BTreeSet<&str> = raw.steps.keys().map(|k| k.get_ref().as_str()).collect();
        let mut steps = BTreeMap::new();
        for (name, raw_step) in &raw.steps {
            let step = name.get_ref().as_str();
            if !valid_name(step) {
                return Err(at(
                    name.span(),
                    step,
                    "name",
                    "step names are 1-64 characters of a-z, 0-9, `-` and `_`".into(),
                ));
            }
            if raw_step.module.get_ref().trim().is_empty() {
                return Err(at(
                    raw_step.module.span(),
                    step,
                    "module",
                    "is empty".into(),
                ));
            }
            if let Some(id) = raw_step.module.get_ref().strip_prefix("sha256:")
                && let Err(e) = crate::modules::check_id(id)
            {
                return Err(at(raw_step.module.span(), step, "module", e.to_string()));
            }
            let mut depends_on = Vec::new();
            for dep in &raw_step.depends_on {
                let d = dep.get_ref().as_str();
                if d == step {
                    return Err(at(
                        dep.span(),
                        step,
                        "depends_on",
                        "a step cannot depend on itself".into(),
                    ));
                }
                if !names.contains(d) {
                    return Err(at(
                        dep.span(),
                        step,
                        "depends_on",
                        format!("there is no step `{d}`"),
                    ));
                }
                if depends_on.iter().any(|x: &String| x == d) {
                    return Err(at(
                        dep.span(),
                        step,
                        "depends_on",
                        format!("`{d}` is listed twice"),
                    ));
                }
                depends_on.push(d.to_string());
            }
            let input = raw_step
                .input
                .as_ref()
                .map(|i| i.get_ref().clone())
                .unwrap_or_default();
            if let Some(i) = &raw_step.input {
                for part in template_parts(i.get_ref()) {
                    match part {
                        Part::Ref(r, _) if !depends_on.iter().any(|d| d == r) => {
                            return Err(at(
                                i.span(),
                                step,
                                "input",
                                format!("`{{{{{r}}}}}` names a step that is not in its depends_on"),
                            ));
                        }
                        Part::Bad(b) => {
                            return Err(at(
                                i.span(),
                                step,
                                "input",
                                format!(
                                    "`{{{{{b}}}}}` is not `{{{{step}}}}` or `{{{{step|trim}}}}`"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
                let (references, literal) =
                    template_parts(i.get_ref())
                        .iter()
                        .fold((0_usize, 0_usize), |(r, t), part| match part {
                            Part::Ref(..) => (r + 1, t),
                            Part::Text(x) => (r, t + x.len()),
                            Part::Bad(_) => (r, t),
                        });
                let bound = references as u128 * MAX_STEP_OUTPUT as u128 + literal as u128;
                if bound > MAX_STEP_INPUT as u128 {
                    let (line, column) = crate::policy::line_column(text, i.span().start);
                    return Err(RunbookError::InputTooLarge {
                        file: file.to_string(),
                        line,
                        column,
                        step: step.to_string(),
                        references,
                        text: literal,
                        bound,
                    });
                }
            }
            let retries = match &raw_step.retries {
                Some(r) if *r.get_ref() > MAX_RETRIES => {
                    return Err(at(
                        r.span(),
                        step,
                        "retries",
                        format!("{} is more than the {MAX_RETRIES} allowed", r.get_ref()),
                    ));
                }
                Some(r) => *r.get_ref(),
                None => 0,
            };
            let timeout_ms = match &raw_step.timeout {
                None => None,
                Some(t) => {
                    let d = humantime::parse_duration(t.get_ref()).map_err(|e| {
                        at(
                            t.span(),
                            step,
                            "timeout",
                            format!("`{}` is not a duration: {e}", t.get_ref()),
                        )
                    })?;
                    if d.is_zero() {
                        return Err(at(
                            t.span(),
                            step,
                            "timeout",
                            "must be more than zero".into(),
                        ));
                    }
                    Some(d.as_millis().min(u128::from(u64::MAX)) as u64)
                }
            };
            let policy = raw_step.policy.as_ref().map(|p| p.get_ref().clone());
            steps.insert(
                step.to_string(),
                StepFile {
                    module: raw_step.module.get_ref().clone(),
                    module_span: raw_step.module.span(),
                    policy_span: raw_step.policy.as_ref().map_or(0..0, |p| p.span()),
                    policy: policy.clone(),
                    spec: StepSpec {
                        module: raw_step.module.get_ref().clone(),
                        policy,
                        input,
                        depends_on,
                        retries,
                        timeout_ms,
                    },
                },
            );
        }
        if let Some(cycle) = find_cycle(steps.iter().map(|(n, s)| (n.as_str(), &s.spec.depends_on)))
        {
            return Err(RunbookError::Cycle {
                file: file.to_string(),
                cycle,
            });
        }
        Ok(Self {
            file: file.to_string(),
            name: raw.name.into_inner(),
            description: raw.description,
            steps,
            text: text.to_string(),
        })
    }

    /// Resolves every step's module and checks its policy. `module` maps
    /// the text as written to a module id or says why it cannot;
    /// `policy` says why a named policy cannot be used (unknown, or the
    /// caller is not among its callers), or `Ok` if it can.
    pub fn resolve(
        &self,
        caller: &str,
        mut module: impl FnMut(&str) -> Result<String, String>,
        mut policy: impl FnMut(&str) -> Result<(), String>,
    ) -> Result<RunbookSpec, RunbookError> {
        let at =
            |span: std::ops::Range<usize>, step: &str, field: &'static str, message: String| {
                let (line, column) = crate::policy::line_column(&self.text, span.start);
                RunbookError::Step {
                    file: self.file.clone(),
                    line,
                    column,
                    step: step.to_string(),
                    field,
                    message,
                }
            };
        let mut steps = BTreeMap::new();
        for (name, step) in &self.steps {
            let id = module(&step.module)
                .map_err(|m| at(step.module_span.clone(), name, "module", m))?;
            if let Some(p) = &step.policy {
                policy(p).map_err(|m| at(step.policy_span.clone(), name, "policy", m))?;
            }
            let mut spec = step.spec.clone();
            spec.module = id;
            steps.insert(name.clone(), spec);
        }
        Ok(RunbookSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            caller: caller.to_string(),
            steps,
            traceparent: None,
        })
    }

    /// The distinct module references that are files (not `sha256:` ids).
    pub fn module_files(&self) -> BTreeSet<&str> {
        self.steps
            .values()
            .map(|s| s.module.as_str())
            .filter(|m| !m.starts_with("sha256:"))
            .collect()
    }
}

/// A cycle among `deps`, as the list of steps on it, if there is one.
fn find_cycle<'a>(deps: impl Iterator<Item = (&'a str, &'a Vec<String>)>) -> Option<Vec<String>> {
    let graph: BTreeMap<&str, &Vec<String>> = deps.collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in graph.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative DFS keeping the path, so deep runbooks cannot overflow the stack.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Visiting);
        while let Some((node, next)) = path.last_mut() {
            let children = graph.get(*node).map_or(&[][..], |v| v.as_slice());
            if *next < children.len() {
                let child = children[*next].as_str();
                *next += 1;
                match marks.get(child) {
                    Some(Mark::Visiting) => {
                        let from = path.iter().position(|(n, _)| *n == child).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(child.to_string());
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child, Mark::Visiting);
                        path.push((child, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    None
}

impl RunbookSpec {
    /// Steps in an order where each comes after its dependencies.
    pub fn topological_order(&self) -> Vec<&str> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.steps.len());
        while order.len() < self.steps.len() {
            let before = order.len();
            for (name, step) in &self.steps {
                if !done.contains(name.as_str())
                    && step.depends_on.iter().all(|d| done.contains(d.as_str()))
                {
                    done.insert(name);
                    order.push(name.as_str());
                }
            }
            if order.len() == before {
                break; // a cycle; validation refuses these
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "digest"
description = "d"

[steps.collect]
module = "echo.wasm"
input = "hello world"

[steps.count]
module = "wordcount.wasm"
depends_on = ["collect"]
input = "text: {{collect}}! {{ collect|trim }}."
retries = 2
timeout = "5s"
"#;

    fn err(text: &str) -> RunbookError {
        RunbookFile::parse(text, "rb.toml").unwrap_err()
    }

    #[test]
    fn a_good_file_parses_and_renders_inputs() {
        let rb = RunbookFile::parse(GOOD, "rb.toml").unwrap();
        assert_eq!(rb.steps.len(), 2);
        let spec = rb
            .resolve("me", |m| Ok(format!("id-of-{m}")), |_| Ok(()))
            .unwrap();
        assert_eq!(spec.steps["count"].module, "id-of-wordcount.wasm");
        assert_eq!(spec.steps["count"].timeout_ms, Some(5000));
        assert_eq!(spec.topological_order(), vec!["collect", "count"]);
        let outputs = BTreeMap::from([("collect".to_string(), b" a b\n".to_vec())]);
        assert_eq!(
            spec.steps["count"].render_input(&outputs).unwrap(),
            b"text:  a b\n! a b."
        );
    }

    #[test]
    fn errors_name_the_step_field_and_position() {
        let e = err(&GOOD.replace("depends_on = [\"collect\"]", "depends_on = [\"gather\"]"));
        let text = e.to_string();
        assert!(text.contains("step `count`, field `depends_on`"), "{text}");
        assert!(text.contains("no step `gather`"), "{text}");
        assert!(text.starts_with("rb.toml:11:15:"), "{text}");

        let e = err(&GOOD.replace("retries = 2", "retires = 2"));
        assert!(matches!(e, RunbookError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("retires"), "{e}");

        let e = err(&GOOD.replace(
            "\"text: {{collect}}! {{ collect|trim }}.\"",
            "\"{{other}}\"",
        ));
        assert!(e.to_string().contains("field `input`"), "{e}");
        let e = err(&GOOD.replace("collect|trim", "collect|upper"));
        assert!(
            e.to_string()
                .contains("is not `{{step}}` or `{{step|trim}}`"),
            "{e}"
        );

        let e = err(&GOOD.replace("\"5s\"", "\"soon\""));
        assert!(e.to_string().contains("field `timeout`"), "{e}");

        let e = err(&GOOD.replace("retries = 2", "retries = 99"));
        assert!(e.to_string().contains("field `retries`"), "{e}");

        let e = err("name = \"x\"\n");
        assert!(e.to_string().contains("no steps"), "{e}");
    }

    #[test]
    fn sha256_references_must_be_module_ids() {
        let id = "ab".repeat(32);
        let ok = GOOD.replace("\"echo.wasm\"", &format!("\"sha256:{id}\""));
        RunbookFile::parse(&ok, "rb.toml").unwrap();
        for bad in [
            String::new(),
            "abc".into(),
            id.to_uppercase(),
            "..".into(),
            format!("../{}", &id[3..]),
            format!("{}/", &id[1..]),
        ] {
            let text = GOOD.replace("\"echo.wasm\"", &format!("\"sha256:{bad}\""));
            let e = err(&text).to_string();
            assert!(
                e.contains("step `collect`, field `module`") && e.contains("64 lower-case hex"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn templates_that_could_render_past_the_input_cap_are_refused() {
        let with_input = |input: &str| {
            GOOD.replace(
                "\"text: {{collect}}! {{ collect|trim }}.\"",
                &format!("\"{input}\""),
            )
        };
        // 32 full outputs of 512 KiB are exactly 16 MiB: allowed.
        let at_cap = "{{collect}}".repeat(MAX_STEP_INPUT / MAX_STEP_OUTPUT);
        RunbookFile::parse(&with_input(&at_cap), "rb.toml").unwrap();
        // One byte of text more is over; 100,000 references (~50 GiB) too.
        for input in [format!("{at_cap}x"), "{{collect}}".repeat(100_000)] {
            match err(&with_input(&input)) {
                RunbookError::InputTooLarge {
                    step, references, ..
                } => {
                    assert_eq!(step, "count");
                    assert!(references >= 32);
                }
                other => panic!("{other}"),
            }
        }
        let e = err(&with_input(&"{{collect}}".repeat(100_000))).to_string();
        assert!(
            e.contains("step `count`, field `input`") && e.contains("100000 references"),
            "{e}"
        );
        assert_eq!(
            err(&with_input(&"{{collect}}".repeat(33))).kind(),
            ErrorKind::InvalidRequest
        );
    }

    #[test]
    fn rendering_past_the_input_cap_fails_before_allocating() {
        let step = StepSpec {
            module: String::new(),
            policy: None,
            input: "{{a}}".repeat(200_000),
            depends_on: vec!["a".into()],
            retries: 0,
            timeout_ms: None,
        };
        let outputs = BTreeMap::from([("a".to_string(), vec![b'x'; 512 * 1024])]);
        let e = step.render_input(&outputs).unwrap_err();
        assert_eq!(e.size, 200_000 * 512 * 1024);
        // Small outputs render.
        let outputs = BTreeMap::from([("a".to_string(), b"y".to_vec())]);
        assert_eq!(step.render_input(&outputs).unwrap().len(), 200_000);
    }

    #[test]
    fn cycles_are_named() {
        let text = r#"
name = "c"
[steps.a]
module = "m"
depends_on = ["c"]
[steps.b]
module = "m"
depends_on = ["a"]
[steps.c]
module = "m"
depends_on = ["b"]
"#;
        match err(text) {
            RunbookError::Cycle { cycle, .. } => {
                assert_eq!(cycle.first(), cycle.last());
                assert_eq!(cycle.len(), 4);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_modules_and_policies_name_the_step() {
        let rb = RunbookFile::parse(GOOD, "rb.toml").unwrap();
        let e = rb
            .resolve("me", |m| Err(format!("no module `{m}`")), |_| Ok(()))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("step `collect`, field `module`: no module `echo.wasm`"),
            "{e}"
        );
        let with_policy = GOOD.replace(
            "input = \"hello world\"",
            "input = \"x\"\npolicy = \"nope\"",
        );
        let rb = RunbookFile::parse(&with_policy, "rb.toml").unwrap();
        let e = rb
            .resolve("me", |m| Ok(m.into()), |p| Err(format!("no policy `{p}`")))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("step `collect`, field `policy`: no policy `nope`"),
            "{e}"
        );
    }

    #[test]
    fn templates_without_closing_braces_are_text() {
        let step = StepSpec {
            module: String::new(),
            policy: None,
            input: "a {{ b".into(),
            depends_on: vec![],
            retries: 0,
            timeout_ms: None,
        };
        assert_eq!(step.render_input(&BTreeMap::new()).unwrap(), b"a {{ b");
    }

    #[test]
    fn the_shipped_runbooks_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunbookFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "no runbooks in {}", dir.display());
    }
}
