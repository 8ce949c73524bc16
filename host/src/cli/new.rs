//! `chassis new`: a new agent project in Rust, Python or JavaScript that
//! builds with one command and runs with the next.
//!
//! Every file it writes comes from this repository at build time (the WIT,
//! the SDK of the language, the `hello` example in that language), so a
//! scaffold is what the tests build and run, never a hand-kept copy. The
//! project carries its SDK and WIT with it: it builds without this
//! repository, with only the language's upstream toolchain.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// The WIT every agent is built against, with the WASI interfaces its
/// `http-agent` world imports.
const WIT: &[(&str, &str)] = &[
    (
        "world.wit",
        include_str!("../../../guest-sdk/wit/world.wit"),
    ),
    (
        "deps/cli.wit",
        include_str!("../../../guest-sdk/wit/deps/cli.wit"),
    ),
    (
        "deps/clocks.wit",
        include_str!("../../../guest-sdk/wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../guest-sdk/wit/deps/filesystem.wit"),
    ),
    (
        "deps/http.wit",
        include_str!("../../../guest-sdk/wit/deps/http.wit"),
    ),
    (
        "deps/io.wit",
        include_str!("../../../guest-sdk/wit/deps/io.wit"),
    ),
    (
        "deps/random.wit",
        include_str!("../../../guest-sdk/wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../guest-sdk/wit/deps/sockets.wit"),
    ),
];

/// The componentize-py release the Python scaffold's build names.
pub(crate) const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript scaffold's package.json pins.
pub(crate) const COMPONENTIZE_JS: &str = "0.23.0";

/// The language of a new agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// A `cdylib` crate on the `chassis-guest` SDK, built for wasm32-wasip2.
    Rust,
    /// `app.py` on the `chassis_agent` SDK, built with componentize-py.
    Python,
    /// `agent.js` on the `chassis.js` SDK, built with componentize-js.
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The agent's name: lowercase letters, digits and dashes, starting
    /// with a letter. The project is made in a new directory of this name
    /// and builds `NAME.wasm`.
    #[arg(value_name = "NAME", value_parser = agent_name)]
    name: String,
    /// The language to write the agent in.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Make the project directory here instead of in the current directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
}

impl NewArgs {
    /// Writes the project and prints the commands that build and run it.
    pub(crate) fn run(self) -> Result<ExitCode> {
        let dir = self.path.join(&self.name);
        if dir.exists() {
            bail!(
                "{} already exists; chassis new never writes into an existing directory",
                dir.display()
            );
        }
        let files = project(&self.name, self.lang);
        for (rel, content) in &files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        make_executable(&dir.join("build.sh"))?;
        println!(
            "created {}/ (a {} agent, {} files)\n\nnext:\n{}",
            dir.display(),
            self.lang,
            files.len(),
            next_steps(&dir, &self.name, self.lang)
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// NAME as clap parses it: a bad name is a usage error (exit 2).
fn agent_name(name: &str) -> Result<String, String> {
    check_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

/// Refuses names that are not a valid crate, module and file name alike.
fn check_name(name: &str) -> Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "`{name}` is not a valid agent name: use lowercase letters, digits and dashes, starting with a letter (at most 64)"
        );
    }
    Ok(())
}

/// The commands that take the new project to a run.
fn next_steps(dir: &Path, name: &str, lang: Lang) -> String {
    let install = match lang {
        Lang::Rust => "rustup target add wasm32-wasip2   # once".to_string(),
        Lang::Python => format!(
            "python3 -m venv .venv && .venv/bin/pip install componentize-py=={COMPONENTIZE_PY}   # once"
        ),
        Lang::Js => "npm install   # once: componentize-js into node_modules/".to_string(),
    };
    format!(
        "  cd {}\n  {install}\n  ./build.sh   # builds {name}.wasm\n  chassis run {name}.wasm --input world\n",
        dir.display()
    )
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Every file of a new project, as (path in the project, content).
fn project(name: &str, lang: Lang) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let wit_dir = match lang {
        // The Rust SDK reads its WIT from its own crate.
        Lang::Rust => "sdk/wit",
        Lang::Python | Lang::Js => "wit",
    };
    for (rel, text) in WIT {
        files.push((format!("{wit_dir}/{rel}"), (*text).to_string()));
    }
    let build = match lang {
        Lang::Rust => {
            let artifact = name.replace('-', "_");
            files.push(("Cargo.toml".into(), rust_manifest(name)));
            files.push((
                "src/lib.rs".into(),
                include_str!("../../../modules/hello/src/lib.rs").into(),
            ));
            files.push(("sdk/Cargo.toml".into(), RUST_SDK_MANIFEST.into()));
            files.push((
                "sdk/src/lib.rs".into(),
                include_str!("../../../guest-sdk/src/lib.rs").into(),
            ));
            files.push(("README.md".into(), readme(name, lang)));
            format!(
                "cargo build --release --target wasm32-wasip2\ncp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{artifact}.wasm\" {name}.wasm\n"
            )
        }
        Lang::Python => {
            files.push((
                "app.py".into(),
                include_str!("../../../modules/hello-py/app.py").into(),
            ));
            files.push((
                "chassis_agent/__init__.py".into(),
                include_str!("../../../guest-sdk/python/chassis_agent/__init__.py").into(),
            ));
            files.push((
                "chassis_agent/http.py".into(),
                include_str!("../../../guest-sdk/python/chassis_agent/http.py").into(),
            ));
            files.push(("README.md".into(), readme(name, lang)));
            format!(
                "# componentize-py {COMPONENTIZE_PY} from PyPI, in .venv or on PATH\n\
                 PATH=\"$PWD/.venv/bin:$PATH\"\n\
                 componentize-py -d wit -w http-agent componentize -p . app -o {name}.wasm\n"
            )
        }
        Lang::Js => {
            // The example's first line tells this repository's test build
            // which engines to build it with; a project chooses in build.sh.
            let example = include_str!("../../../modules/hello-js/agent.js");
            let example = match example.split_once('\n') {
                Some((first, rest)) if first.starts_with("// chassis-engines:") => rest,
                _ => example,
            };
            files.push(("agent.js".into(), example.into()));
            files.push((
                "chassis.js".into(),
                include_str!("../../../guest-sdk/js/chassis.js").into(),
            ));
            files.push(("package.json".into(), js_manifest(name)));
            files.push(("README.md".into(), readme(name, lang)));
            format!(
                "# componentize-js from npm (npm install), or one already on PATH.\n\
                 # ENGINE=quickjs ./build.sh builds with QuickJS instead: ~1.6 MB and\n\
                 # faster to start, but no fetch or console (see chassis.js).\n\
                 PATH=\"$PWD/node_modules/.bin:$PATH\"\n\
                 if [ \"${{ENGINE:-starlingmonkey}}\" = quickjs ]; then\n\
                 \x20 componentize-qjs --wit wit -n agent --sync --module-root . --js agent.js -o {name}.wasm\n\
                 else\n\
                 \x20 componentize-js --wit wit --world-name agent -o {name}.wasm agent.js\n\
                 fi\n"
            )
        }
    };
    files.push((
        "build.sh".into(),
        format!(
            "#!/bin/sh\n# Builds {name}.wasm, a chassis agent in {lang}.\nset -eu\ncd \"$(dirname \"$0\")\"\n{build}echo \"built {name}.wasm\"\n"
        ),
    ));
    files
}

const RUST_SDK_MANIFEST: &str = r#"[package]
name = "chassis-guest"
description = "Write chassis agents: implement one trait, call one export macro, build for wasm32-wasip2."
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc"] }
"#;

fn rust_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
chassis-guest = {{ path = "sdk" }}

[profile.release]
opt-level = "s"
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# A project of its own, not a member of any workspace around it.
[workspace]
"#
    )
}

fn js_manifest(name: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "./build.sh"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}"
  }}
}}
"#
    )
}

fn readme(name: &str, lang: Lang) -> String {
    let (entry, sdk) = match lang {
        Lang::Rust => ("src/lib.rs", "sdk/ (the chassis-guest crate)"),
        Lang::Python => ("app.py", "chassis_agent/"),
        Lang::Js => ("agent.js", "chassis.js"),
    };
    format!(
        "# {name}\n\nA chassis agent in {lang}, made by `chassis new`. The agent is\n`{entry}`; its SDK is {sdk} and the WIT it is built against is in\n`{wit}`.\n\n```sh\n{steps}```\n\nThe run's policy decides what it may reach: see `chassis policy explain`.\n",
        wit = if lang == Lang::Rust { "sdk/wit" } else { "wit" },
        steps = next_steps(Path::new("."), name, lang)
            .lines()
            .skip(1)
            .map(|l| format!("{}\n", l.trim_start()))
            .collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_crate_module_and_file_names_are_refused() {
        for bad in ["", "Hello", "1st", "a_b", "a/b", "..", "a-", "-a", "héllo"] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["a", "hello", "hello-agent", "agent2"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn every_project_has_a_build_script_and_the_wit_it_builds_against() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = project("demo", lang);
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            assert!(names.contains(&"build.sh"), "{lang}: {names:?}");
            assert!(
                names.iter().any(|n| n.ends_with("wit/world.wit")),
                "{lang}: {names:?}"
            );
            assert!(
                names.iter().any(|n| n.ends_with("wit/deps/http.wit")),
                "{lang}: {names:?}"
            );
        }
    }
}
