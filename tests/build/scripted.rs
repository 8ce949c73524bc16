//! Python and JavaScript guests: found by their entry file, built with the
//! upstream toolchains `cargo xtask` installs under the target dir, and
//! cached by a hash of everything that goes into them.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The toolchain a scripted guest is built with.
///
/// A JavaScript guest is built with StarlingMonkey unless its first line
/// names its engines, `// chassis-engines: starlingmonkey quickjs`; with
/// QuickJS its identifier ends in `_qjs` instead of `_js`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lang {
    Python,
    JavaScript,
    QuickJs,
}

impl Lang {
    /// The toolchain that builds it, for the generated docs.
    pub(crate) fn tool(self) -> &'static str {
        match self {
            Lang::Python => "componentize-py",
            Lang::JavaScript => "componentize-js (StarlingMonkey)",
            Lang::QuickJs => "componentize-qjs (QuickJS)",
        }
    }

    fn entry(self) -> &'static str {
        match self {
            Lang::Python => "app.py",
            Lang::JavaScript | Lang::QuickJs => "agent.js",
        }
    }
}

/// The engines a JavaScript guest names on its first line.
fn js_engines(entry: &Path) -> Vec<Lang> {
    let text = fs::read_to_string(entry).unwrap();
    let Some(list) = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("// chassis-engines:"))
    else {
        return vec![Lang::JavaScript];
    };
    list.split_whitespace()
        .map(|engine| match engine {
            "starlingmonkey" => Lang::JavaScript,
            "quickjs" => Lang::QuickJs,
            other => panic!("{}: unknown engine `{other}`", entry.display()),
        })
        .collect()
}

/// One scripted guest.
#[derive(Debug)]
pub(crate) struct Source {
    /// Its directory, relative to `modules/`.
    pub(crate) dir: String,
    /// Its language.
    pub(crate) lang: Lang,
}

/// Builds every Python and JavaScript guest under `modules/` (and
/// `modules/hostile/`) that is missing or out of date, a few at a time.
/// Returns (identifier, source, built component) for each.
pub(crate) fn build_all(
    root: &Path,
    modules: &Path,
    guests: &Path,
) -> Vec<(String, Source, PathBuf)> {
    let mut found = Vec::new();
    for (dir, prefix) in [
        (modules.to_path_buf(), ""),
        (modules.join("hostile"), "hostile_"),
    ] {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let langs = if path.join(Lang::Python.entry()).is_file() {
                vec![Lang::Python]
            } else if path.join(Lang::JavaScript.entry()).is_file() {
                js_engines(&path.join(Lang::JavaScript.entry()))
            } else {
                continue;
            };
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let base = format!("{prefix}{}", name.replace('-', "_"));
            let rel = path.strip_prefix(modules).unwrap().display().to_string();
            for lang in langs {
                let ident = match lang {
                    Lang::QuickJs => match base.strip_suffix("_js") {
                        Some(stem) => format!("{stem}_qjs"),
                        None => format!("{base}_qjs"),
                    },
                    _ => base.clone(),
                };
                found.push((
                    ident,
                    Source {
                        dir: rel.clone(),
                        lang,
                    },
                ));
            }
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let tools = Tools::find(root, guests);
    let out_dir = guests.join("agents");
    fs::create_dir_all(&out_dir).unwrap();
    let mut pending = Vec::new();
    let mut built = Vec::new();
    for (ident, source) in found {
        let out = out_dir.join(format!("{ident}.wasm"));
        let stamp = out_dir.join(format!("{ident}.inputs"));
        let key = format!("{:016x}", tools.input_hash(root, modules, &source));
        let fresh = out.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == key);
        if !fresh {
            pending.push((
                ident.clone(),
                source.dir.clone(),
                source.lang,
                out.clone(),
                stamp,
                key,
            ));
        }
        built.push((ident, source, out));
    }
    // Each build is mostly one thread (wizer pre-initialises the
    // interpreter), so run as many at once as there are cores.
    let width = std::thread::available_parallelism().map_or(2, |n| n.get());
    for batch in pending.chunks(width) {
        let children: Vec<(Child, &Job)> = batch
            .iter()
            .map(|job| (tools.spawn(root, modules, guests, job), job))
            .collect();
        for (child, (ident, dir, lang, out, stamp, key)) in children {
            let output = child.wait_with_output().unwrap();
            if !output.status.success() {
                panic!(
                    "building modules/{dir} with {} failed ({}):\n{}\n{}",
                    lang.tool(),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let tmp = out.with_extension("wasm.tmp");
            fs::rename(&tmp, out).unwrap_or_else(|e| panic!("{ident}: {}: {e}", tmp.display()));
            fs::write(stamp, key).unwrap();
        }
    }
    built
}

/// One pending build: identifier, source dir, language, output, stamp
/// file, input hash.
type Job = (String, String, Lang, PathBuf, PathBuf, String);

/// Where the toolchains are, and their versions (part of every input hash).
struct Tools {
    componentize_py: PathBuf,
    componentize_js: PathBuf,
    componentize_qjs: PathBuf,
    node: PathBuf,
    versions: String,
}

impl Tools {
    fn find(root: &Path, guests: &Path) -> Self {
        let target = guests.parent().unwrap();
        let componentize_py = target.join("agents-py/bin/componentize-py");
        let js_pkg = target.join("agents-js/node_modules/@bytecodealliance/componentize-js");
        let componentize_js = js_pkg.join("src/cli.js");
        // QuickJS's componentizer comes with jco, a dependency of
        // componentize-js.
        let componentize_qjs = target.join("agents-js/node_modules/.bin/componentize-qjs");
        for (tool, path) in [
            ("componentize-py", &componentize_py),
            ("componentize-js", &componentize_js),
            ("componentize-qjs", &componentize_qjs),
        ] {
            if !path.is_file() {
                panic!(
                    "{tool} is not installed at {}: the Python and JavaScript guests under modules/ \
                     are built with it. `cargo xtask guests` (or `cargo xtask test`) installs it.",
                    path.display()
                );
            }
        }
        let py_version = Command::new(&componentize_py)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        // The lock names every npm package version, jco (QuickJS) too.
        let js_version =
            fs::read_to_string(target.join("agents-js/package-lock.json")).unwrap_or_default();
        println!(
            "cargo:rerun-if-changed={}",
            root.join("guest-sdk/js/package-lock.json").display()
        );
        Self {
            componentize_py,
            componentize_js,
            componentize_qjs,
            node: PathBuf::from("node"),
            versions: format!("{py_version}\n{js_version}"),
        }
    }

    /// A hash of everything a guest's build reads.
    fn input_hash(&self, root: &Path, modules: &Path, source: &Source) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.versions.hash(&mut hasher);
        let sdk = match source.lang {
            Lang::Python => root.join("guest-sdk/python"),
            Lang::JavaScript | Lang::QuickJs => root.join("guest-sdk/js"),
        };
        source.lang.hash(&mut hasher);
        for dir in [modules.join(&source.dir), sdk, root.join("guest-sdk/wit")] {
            for file in files_under(&dir) {
                file.strip_prefix(root).unwrap().hash(&mut hasher);
                fs::read(&file).unwrap().hash(&mut hasher);
            }
        }
        hasher.finish()
    }

    fn spawn(
        &self,
        root: &Path,
        modules: &Path,
        guests: &Path,
        (ident, dir, lang, out, _, _): &Job,
    ) -> Child {
        let wit = root.join("guest-sdk/wit");
        let tmp = out.with_extension("wasm.tmp");
        let mut cmd = match lang {
            Lang::Python => {
                // Every Python agent targets `http-agent`, so
                // `chassis_agent.http` is there when an agent imports it.
                let mut cmd = Command::new(&self.componentize_py);
                cmd.arg("-d")
                    .arg(&wit)
                    .args(["-w", "http-agent", "componentize", "-p"])
                    .arg(modules.join(dir))
                    .arg("-p")
                    .arg(root.join("guest-sdk/python"))
                    .arg("app")
                    .arg("-o")
                    .arg(&tmp)
                    .env_remove("VIRTUAL_ENV");
                cmd
            }
            Lang::JavaScript | Lang::QuickJs => {
                // componentize-js resolves imports only below the entry
                // file's directory, so the agent and the SDK are staged
                // side by side.
                let stage = guests.join("agents/stage").join(ident);
                let _ = fs::remove_dir_all(&stage);
                fs::create_dir_all(&stage).unwrap();
                for file in files_under(&modules.join(dir)) {
                    let rel = file.strip_prefix(modules.join(dir)).unwrap();
                    let to = stage.join(rel);
                    fs::create_dir_all(to.parent().unwrap()).unwrap();
                    fs::copy(&file, to).unwrap();
                }
                fs::copy(
                    root.join("guest-sdk/js/chassis.js"),
                    stage.join("chassis.js"),
                )
                .unwrap();
                if *lang == Lang::QuickJs {
                    // `--sync`: the runtime without the component-model
                    // async ABI, which the host does not enable.
                    let mut cmd = Command::new(&self.componentize_qjs);
                    cmd.arg("--wit")
                        .arg(&wit)
                        .args(["-n", "agent", "--sync", "--module-root"])
                        .arg(&stage)
                        .arg("--js")
                        .arg(stage.join("agent.js"))
                        .arg("-o")
                        .arg(&tmp);
                    cmd
                } else {
                    let mut cmd = Command::new(&self.node);
                    cmd.arg(&self.componentize_js)
                        .arg("--wit")
                        .arg(&wit)
                        .args(["--world-name", "agent", "-o"])
                        .arg(&tmp)
                        .arg(stage.join("agent.js"));
                    cmd
                }
            }
        };
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} for modules/{dir}: {e}", lang.tool()))
    }
}

/// Every file below `dir`, sorted, skipping Python's caches.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
