//! `chassis compile`: a component compiled ahead of time into an artifact
//! sealed with the data dir's key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::local::{DataDirArg, one_shot_host};
use super::output::fail;

#[derive(Debug, Args)]
pub(crate) struct CompileArgs {
    /// The component to compile.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Where to write the sealed artifact.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    data_dir: DataDirArg,
}

impl CompileArgs {
    /// Compiles the component into a sealed artifact.
    pub(crate) fn run(self) -> Result<ExitCode> {
        let host = one_shot_host(&self.data_dir.resolve(), None)?;
        let bytes = std::fs::read(&self.input)
            .with_context(|| format!("reading {}", self.input.display()))?;
        match host.modules().compile_to(&bytes, &self.output) {
            Ok(info) => {
                println!(
                    "compiled {} ({}, sha256 {}) -> {}",
                    self.input.display(),
                    info.world,
                    info.id,
                    self.output.display()
                );
                if !info.ignored_exports.is_empty() {
                    println!(
                        "ignored exports (never called by the host): {}",
                        info.ignored_exports.join(", ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(fail(false, &self.input, e.kind(), &e.to_string())),
        }
    }
}
