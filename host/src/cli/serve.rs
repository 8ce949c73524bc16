//! `chassis serve`: the config, logging and traces, then the host the
//! composition root assembles, served until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use chassis::config::Config;
use chassis::server;

use super::local::vault_token_from_env;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (YAML, the `chassis:` document).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `server.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Override `policies_dir`.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// Override `data_dir`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Sets up logging from `logging:` and, with an OTLP endpoint, traces
/// (spans of INFO and above from chassis, whatever the log level). Call it
/// inside the runtime that will carry the trace exporter; the returned
/// guard flushes queued spans when dropped.
fn init_logging(
    logging: &chassis::config::Logging,
    otlp_endpoint: Option<&str>,
) -> Result<Option<chassis::telemetry::traces::Traces>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter =
        EnvFilter::try_from_env("CHASSIS_LOG").unwrap_or_else(|_| EnvFilter::new(logging.filter()));
    // Colours only for a terminal: a log file or a collector gets plain text.
    let (writer, ansi): (tracing_subscriber::fmt::writer::BoxMakeWriter, bool) = match logging
        .output
        .as_str()
    {
        "stdout" => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
        ),
        "stderr" => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {path} (logging.output)"))?;
            (
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file)),
                false,
            )
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match logging.format {
        chassis::config::LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        chassis::config::LogFormat::Text => fmt.boxed(),
    };
    let (traces, otel) = match otlp_endpoint {
        Some(endpoint) => {
            let (traces, layer) = chassis::telemetry::traces::Traces::start(endpoint)?;
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("chassis", tracing::Level::INFO);
            (Some(traces), Some(layer.with_filter(spans)))
        }
        None => (None, None),
    };
    let registry = tracing_subscriber::registry()
        .with(fmt.with_filter(chassis::telemetry::traces::log_filter(filter)));
    // Not `.with(otel)` with `otel` an `Option`: a `None` layer answers
    // "interested" for every callsite, so the spans the log leaves out
    // would still be built, for nobody.
    match otel {
        Some(otel) => registry.with(otel).init(),
        None => registry.init(),
    }
    Ok(traces)
}

impl ServeArgs {
    /// Serves until SIGTERM or Ctrl-C.
    pub(crate) fn run(self) -> Result<ExitCode> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::from_env()?,
        };
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = self.policies {
            config.policies_dir = Some(dir);
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        config.validate("command line")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let otlp = config.telemetry.endpoint();
        let traces = {
            let _enter = runtime.enter();
            init_logging(&config.logging, otlp.as_deref())?
        };
        if let Some(endpoint) = &otlp {
            tracing::info!(%endpoint, "sending traces over OTLP");
        }
        let assembled = server::assemble(&config, vault_token_from_env())?;
        let served = runtime.block_on(async move {
            let listener = chassis::grpc::bind(&config).await?;
            let announce = |addr| println!("chassis listening on {addr}");
            server::run(&config, assembled, listener, announce, shutdown_signal()).await?;
            anyhow::Ok(ExitCode::SUCCESS)
        });
        // Flush queued spans while the runtime that carries the exporter runs.
        drop(traces);
        served
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
