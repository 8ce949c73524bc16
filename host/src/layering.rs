//! The library's module layers, and a test that the code keeps to them.
//!
//! A module may use its own items and those of modules in lower layers,
//! never a module in its own layer or above. `docs/architecture.md` draws
//! the same picture; this test reads every `crate::` path in the library's
//! sources (tests and comments aside) and fails on an edge that points up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Modules in one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "slots", "limits"],
    &["policy", "engine"],
    &["config", "disk"],
    &["audit"],
    &["telemetry"],
    &["secrets"],
    &["modules"],
    &["sandbox"],
    &["host"],
    &["coord"],
    &["grpc"],
    &["load"],
    &["server"],
];

/// Edges that still point up, each with why it is not yet turned around.
/// The test fails when one disappears too, so the list stays true.
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[];

/// Items the crate root re-exports, by the module that defines them.
fn root_item(name: &str) -> Option<&'static str> {
    match name {
        "ErrorKind" => Some("error"),
        "Host" | "HostBuilder" | "HostError" | "RunRequest" | "StartError" => Some("host"),
        _ => None,
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The code of `text` without comments and without its `#[cfg(test)]`
/// test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The modules `code` names through `crate::` paths.
fn used_modules(code: &str) -> BTreeSet<&'static str> {
    let mut used = BTreeSet::new();
    let mut note = |segment: &str| {
        let segment = segment.trim();
        let name = segment.split("::").next().unwrap_or("").trim();
        if let Some(layer) = LAYERS.iter().flat_map(|l| l.iter()).find(|m| **m == name) {
            used.insert(*layer);
        } else if let Some(module) = root_item(name) {
            used.insert(module);
        }
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Nested groups only ever follow a module name: the first
            // segment of each comma-separated entry is what matters.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        note(&group[start..j]);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            note(&group[start..end]);
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            note(&rest[..end]);
        }
    }
    used
}

/// Which top-level module a source file belongs to (`None` for the crate
/// root and the binary's files).
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" | "layering" => None,
        _ => Some(name.to_string()),
    }
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// Every edge `module -> used` in the library's sources.
fn edges() -> BTreeMap<(String, &'static str), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<(String, &'static str), Vec<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file, &src) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in used_modules(&code(&text)) {
            if used != module {
                edges
                    .entry((module.clone(), used))
                    .or_default()
                    .push(file.strip_prefix(&src).unwrap().display().to_string());
            }
        }
    }
    edges
}

#[test]
fn every_module_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in files {
        if let Some(module) = module_of(&file, &src) {
            assert!(
                layer_of(&module).is_some(),
                "{} belongs to `{module}`, which no layer in layering.rs names",
                file.display()
            );
        }
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    let mut upward = Vec::new();
    let mut known_seen = BTreeSet::new();
    for ((from, to), files) in edges() {
        let (Some(a), Some(b)) = (layer_of(&from), layer_of(to)) else {
            continue;
        };
        if b < a {
            continue;
        }
        if KNOWN_UPWARD.iter().any(|(f, t, _)| *f == from && *t == to) {
            known_seen.insert((from.clone(), to));
            continue;
        }
        upward.push(format!(
            "`{from}` (layer {a}) uses `{to}` (layer {b}) in {}",
            files.join(", ")
        ));
    }
    assert!(
        upward.is_empty(),
        "dependencies that point up the layers (see layering.rs and docs/architecture.md):\n{}",
        upward.join("\n")
    );
    for (from, to, why) in KNOWN_UPWARD {
        assert!(
            known_seen.contains(&(from.to_string(), *to)),
            "`{from}` no longer uses `{to}`: drop it from KNOWN_UPWARD ({why})"
        );
    }
}

#[test]
fn the_reader_finds_paths_in_groups_and_skips_comments_and_tests() {
    let text = "use crate::{ErrorKind, policy::{Policy, Mode}};\n\
                // crate::server is only mentioned\n\
                fn f() { crate::audit::record(); }\n\
                #[cfg(test)]\nmod tests { use crate::grpc; }\n";
    let used: Vec<_> = used_modules(&code(text)).into_iter().collect();
    assert_eq!(used, ["audit", "error", "policy"]);
}
