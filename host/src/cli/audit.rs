//! `chassis audit verify|recover|show|rotate-key`: the tamper-evident
//! audit log checked against keys kept apart from it, read, and re-keyed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::local::DataDirArg;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the log: it starts at its genesis, every record chains to the
    /// one before, sequence numbers have no gaps, every checkpoint is
    /// signed for its place, a trusted key signed one, and the log reaches
    /// the checkpoint file. Exits 0 when the log is intact (reporting the
    /// unsigned tail); otherwise names the first bad record and why, and
    /// exits 1.
    Verify {
        /// Log files in order [default: every audit-*.jsonl in <data-dir>/audit].
        files: Vec<PathBuf>,
        /// A trusted public key (hex, or a file of hex keys), kept apart
        /// from the log; repeatable. Or `audit.trusted_keys` in --config.
        #[arg(long, value_name = "KEY|FILE")]
        pubkey: Vec<String>,
        /// Read `audit.trusted_keys` from this config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Trust <data-dir>/keys/audit.pub, which sits beside the log it
        /// judges: anyone who can rewrite the log can rewrite it too.
        #[arg(long)]
        trust_local_key: bool,
        /// Checkpoint file to detect truncation [default: <data-dir>/audit/audit.checkpoint when present].
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The files start after this checkpoint (where a verified, archived
        /// earlier segment ended) instead of at the genesis.
        #[arg(long, value_name = "FILE")]
        from_checkpoint: Option<PathBuf>,
        /// Fail when records follow the last signed checkpoint.
        #[arg(long)]
        require_signed_tail: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// With the server stopped: continue a log whose tail is behind its last
    /// signed checkpoint (records cut, or the checkpoint file lost), writing
    /// a signed `log.recovered` record that names the lost records.
    /// `chassis serve` refuses such a log until this is run.
    Recover {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Print records, filtered. A run's records name their context (module,
    /// policy, caller, limits) by number; it is shown filled in from the
    /// file's `run.context` record, also with --json (the files keep the
    /// compact lines the chain hashes). A `runs` record (the short runs of
    /// one writer round that share a context) is shown as the `run` record
    /// of each of its runs, all under its seq.
    Show {
        /// Log files in order [default: every audit-*.jsonl in <data-dir>/audit].
        files: Vec<PathBuf>,
        /// Only this run id.
        #[arg(long)]
        run: Option<String>,
        /// Only this module (sha256).
        #[arg(long)]
        module: Option<String>,
        /// Only this caller.
        #[arg(long)]
        caller: Option<String>,
        /// Only this event kind, e.g. `run.ended`.
        #[arg(long)]
        kind: Option<String>,
        /// Print records as JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Generate a new signing key and record the rotation, signed by the old
    /// key and endorsed by the new one. Run it with the server stopped.
    RotateKey {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
}

fn audit_files(files: Vec<PathBuf>, data_dir: &Path) -> Result<Vec<PathBuf>> {
    if !files.is_empty() {
        return Ok(files);
    }
    let dir = data_dir.join("audit");
    let found =
        chassis::audit::log_files(&dir).with_context(|| format!("listing {}", dir.display()))?;
    anyhow::ensure!(
        !found.is_empty(),
        "no audit-*.jsonl files in {}",
        dir.display()
    );
    Ok(found)
}

impl AuditCommand {
    /// Runs the audit command.
    pub(crate) fn run(self) -> Result<ExitCode> {
        use chassis::audit::{keys, verify};
        match self {
            AuditCommand::Verify {
                files,
                pubkey,
                config,
                trust_local_key,
                checkpoint,
                from_checkpoint,
                require_signed_tail,
                json,
                data_dir,
            } => {
                let data = data_dir.resolve();
                let files = audit_files(files, &data)?;
                let mut sources = pubkey;
                if let Some(path) = &config {
                    let config = chassis::config::Config::load(path)?;
                    sources.extend(config.audit.trusted_keys.iter().cloned());
                }
                let mut trusted = Vec::new();
                for k in &sources {
                    match keys::parse_public_key(k) {
                        Ok(key) => trusted.push(key),
                        Err(_) => {
                            trusted.extend(keys::read_public_keys(Path::new(k)).with_context(
                                || format!("--pubkey {k}: neither a hex key nor a key file"),
                            )?)
                        }
                    }
                }
                if trust_local_key {
                    let path = keys::keys_dir(&data).join(keys::PUBLIC_KEYS_FILE);
                    eprintln!(
                        "chassis: WARNING: --trust-local-key: trusting {}, which sits beside the log it judges; \
                         whoever can rewrite the log can rewrite that file too. Pass --pubkey with a copy kept off this host.",
                        path.display()
                    );
                    trusted.extend(keys::read_public_keys(&path)?);
                }
                anyhow::ensure!(
                    !trusted.is_empty(),
                    "no trusted keys: pass --pubkey HEX|FILE (a copy of keys/audit.pub kept off this host), \
                     or --config with audit.trusted_keys; --trust-local-key trusts the key file beside the log"
                );
                let checkpoint_path = checkpoint.or_else(|| {
                    let default = data.join("audit").join(verify::CHECKPOINT_FILE);
                    default.exists().then_some(default)
                });
                let checkpoint = match &checkpoint_path {
                    Some(p) => Some(verify::Checkpoint::read(p).map_err(anyhow::Error::msg)?),
                    None => None,
                };
                let from = match &from_checkpoint {
                    Some(p) => Some(verify::Checkpoint::read(p).map_err(anyhow::Error::msg)?),
                    None => None,
                };
                let options = verify::VerifyOptions {
                    trusted: &trusted,
                    checkpoint: checkpoint.as_ref(),
                    from: from.as_ref(),
                    require_signed_tail,
                };
                match verify::verify(&files, &options) {
                    Ok(ok) => {
                        if json {
                            println!("{}", serde_json::json!({ "ok": true, "verified": ok }));
                        } else {
                            println!(
                                "ok: {} records in {} file(s), records {} to {}, last {} ({}), checkpoints signed by {}{}",
                                ok.records,
                                ok.files,
                                ok.first_seq,
                                ok.last_seq,
                                ok.last_seq,
                                &ok.last_hash[..16],
                                ok.keys.join(", "),
                                if ok.checkpoint_matched {
                                    "; matches the checkpoint"
                                } else if checkpoint.is_some() {
                                    "; the checkpoint file precedes these files"
                                } else {
                                    "; no checkpoint file given, truncation at the end not checked"
                                }
                            );
                            if let Some(pruned) = &ok.pruned {
                                println!(
                                    "starts at record {}: records {} to {} ({}) were pruned by retention (log.pruned, record {}, signed){}",
                                    ok.first_seq,
                                    pruned.from,
                                    pruned.to,
                                    pruned.files.join(", "),
                                    pruned.at,
                                    if pruned.from > 0 {
                                        "; earlier prunings removed the records before them"
                                    } else {
                                        ""
                                    }
                                );
                            } else if ok.first_seq > 0 {
                                println!(
                                    "starts after checkpoint {} (--from-checkpoint)",
                                    ok.first_seq - 1
                                );
                            }
                            for loss in &ok.losses {
                                match (loss.from, loss.to) {
                                    (Some(from), Some(to)) => println!(
                                        "recorded loss: records {from} to {to} were lost (log.recovered, record {})",
                                        loss.at
                                    ),
                                    _ => println!(
                                        "recorded loss: the checkpoint file was lost, so a cut tail before record {} could not be ruled out (log.recovered)",
                                        loss.at
                                    ),
                                }
                            }
                            println!("unsigned tail: {} records", ok.unsigned_tail);
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(problem) => {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "ok": false,
                                    "file": problem.file,
                                    "line": problem.line,
                                    "seq": problem.seq,
                                    "reason": problem.reason.to_string(),
                                })
                            );
                        } else {
                            eprintln!("chassis: audit log does not verify: {problem}");
                        }
                        Ok(ExitCode::from(1))
                    }
                }
            }
            AuditCommand::Recover { data_dir } => {
                let data = data_dir.resolve();
                let options = chassis::audit::AuditOptions::in_data_dir(&data);
                let (log, recovery) = chassis::audit::AuditLog::recover(options)?;
                log.close()?;
                match (recovery.problem, recovery.seq) {
                    (Some(problem), Some(seq)) => println!(
                        "recovered the audit log: {problem}; recorded as log.recovered (record {seq}), signed"
                    ),
                    _ => println!(
                        "the audit log's tail matches its last signed checkpoint: nothing to recover"
                    ),
                }
                Ok(ExitCode::SUCCESS)
            }
            AuditCommand::Show {
                files,
                run,
                module,
                caller,
                kind,
                json,
                data_dir,
            } => {
                let files = audit_files(files, &data_dir.resolve())?;
                let mut out = std::io::stdout().lock();
                let mut contexts = chassis::audit::context::Contexts::default();
                for file in files {
                    contexts.new_file();
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    for (i, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        let raw: chassis::audit::record::Record = serde_json::from_str(line)
                            .with_context(|| {
                                format!("{}:{}: not an audit record", file.display(), i + 1)
                            })?;
                        contexts.learn(&raw);
                        // A run's record names its context by number: show it
                        // filled in, so each printed record stands on its own;
                        // a `runs` record shows as the `run` record of each run.
                        for record in contexts.expand_all(&raw) {
                            let field =
                                |name: &str| record.fields[name].as_str().map(str::to_string);
                            let keep = run
                                .as_ref()
                                .is_none_or(|r| field("run_id").as_ref() == Some(r))
                                && module
                                    .as_ref()
                                    .is_none_or(|m| field("module").as_ref() == Some(m))
                                && caller
                                    .as_ref()
                                    .is_none_or(|c| field("caller").as_ref() == Some(c))
                                && kind.as_ref().is_none_or(|k| &record.kind == k);
                            if !keep {
                                continue;
                            }
                            if json {
                                writeln!(out, "{}", serde_json::to_string(&record)?)?;
                            } else {
                                writeln!(
                                    out,
                                    "{:>6} {} {:<18} {}",
                                    record.seq, record.ts, record.kind, record.fields
                                )?;
                            }
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            AuditCommand::RotateKey { data_dir } => {
                let data = data_dir.resolve();
                let options = chassis::audit::AuditOptions::in_data_dir(&data);
                let key_file = options.key_file.clone();
                let mut secret = zeroize_secret();
                getrandom::fill(&mut secret[..])
                    .map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let new = ed25519_dalek::SigningKey::from_bytes(&secret);
                let new_public = new.verifying_key();
                // Take the log's lock first: against a running server this
                // fails before anything is written.
                let log = chassis::audit::AuditLog::open(options)?;
                // The new key is on disk before the log names it, so a crash
                // in between never leaves a rotation to a key that is lost.
                let staged = key_file.with_extension("new");
                if staged.exists() {
                    anyhow::bail!(
                        "{} is left from an interrupted rotation. If `chassis audit show --kind key.rotated` \
                         names its key as the newest, move it over {}; otherwise delete it. Then run rotate-key again.",
                        staged.display(),
                        key_file.display()
                    );
                }
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&staged)
                        .with_context(|| format!("writing {}", staged.display()))?;
                    f.write_all(&secret[..])?;
                    f.sync_all()?;
                }
                log.rotate_key(new)?;
                log.close()?;
                let retired = key_file.with_extension(format!("retired-{}", chrono_stamp()));
                std::fs::rename(&key_file, &retired)
                    .with_context(|| format!("retiring {}", key_file.display()))?;
                std::fs::rename(&staged, &key_file)
                    .with_context(|| format!("installing {}", key_file.display()))?;
                println!(
                    "rotated the audit key: new key {} ({}); old key kept at {}",
                    chassis::audit::record::key_id(&new_public),
                    hex::encode(new_public.as_bytes()),
                    retired.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn chrono_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

fn zeroize_secret() -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new([0u8; 32])
}
