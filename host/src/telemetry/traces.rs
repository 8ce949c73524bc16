//! OpenTelemetry traces, sent over OTLP/gRPC when a collector is configured
//! (`telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`), and off
//! otherwise.
//!
//! chassis's `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`: one per RPC (`grpc::serve`), per run
//! (`Host::run`: module, policy, caller, outcome, fuel, memory), per secret
//! read, claim transaction and module compile. A caller's W3C `traceparent`
//! continues into the RPC span ([`continue_from_headers`]), and a submitted
//! runbook carries the submitter's trace context, so steps claimed by any
//! host join that trace ([`traceparent_of`], [`continue_from_traceparent`]).
//! Span attributes name modules, policies, callers and secret *names* only,
//! never a value.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TelemetryError;

/// Whether a [`Traces`] exporter was started in this process.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (a [`Traces`] was started): only then are a
/// run's figures recorded on its span, where the text log would format
/// them into the span's fields on every run and show them only on the
/// rare line logged inside it (which carries them itself).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The span opened per RPC (`grpc::serve`'s `trace_fn`).
pub(crate) const RPC_SPAN: &str = "rpc";
/// The span opened per run (`Host::run`).
pub(crate) const RUN_SPAN: &str = "run";

/// Whether `meta` is a span opened for every RPC or every run. They exist
/// for traces; the text log leaves them out ([`log_filter`]), so with
/// traces off they are never built.
fn is_per_request_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span()
        && matches!(
            (meta.target(), meta.name()),
            ("chassis::grpc", RPC_SPAN) | ("chassis::host", RUN_SPAN)
        )
}

/// The text log's filter: what `filter` enables, less the per-RPC and
/// per-run spans. Building those two spans and formatting their fields
/// for the log cost a served `echo` ~4 µs of its ~50 µs of CPU (7–10% of
/// served throughput), to prefix the rare line logged inside a run; those
/// lines name their run themselves (`run_id`, `module`, `policy`, `caller`).
pub fn log_filter<S>(
    filter: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::Filter;
    // Without the env filter's level as its hint, the pair would have none,
    // and every `debug!` and `trace!` in the stack (h2, tonic, wasmtime)
    // would be asked whether it is wanted on every call.
    let hint = Filter::<S>::max_level_hint(&filter);
    let leave_out = tracing_subscriber::filter::filter_fn(|meta| !is_per_request_span(meta));
    let leave_out = match hint {
        Some(hint) => leave_out.with_max_level_hint(hint),
        None => leave_out,
    };
    filter.and(leave_out)
}

/// The exporter of a host that sends traces. Dropping it flushes the spans
/// still queued and stops the exporter.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts the OTLP/gRPC exporter to `endpoint` and returns it with the
    /// `tracing` layer that feeds it. Must be called inside a tokio runtime,
    /// which then carries the exporter's connection.
    pub fn start<S>(
        endpoint: &str,
    ) -> Result<
        (
            Self,
            tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        ),
        TelemetryError,
    >
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Traces {
                endpoint: endpoint.to_string(),
                message: e.to_string(),
            })?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("chassis")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("chassis");
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((
            Self { provider },
            tracing_opentelemetry::layer().with_tracer(tracer),
        ))
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("chassis: flushing traces: {e}");
        }
    }
}

/// Reads W3C trace context from HTTP/2 headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the caller's trace when `headers` carry a
/// `traceparent`; otherwise it starts a trace of its own.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span`, to carry its trace to another host.
/// `None` when traces are off (the span has no valid context).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace `traceparent` names (as written by
/// [`traceparent_of`]); an empty or malformed one is ignored.
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
