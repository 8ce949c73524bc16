//! `chassis load`: run a module many times at a set concurrency, in this
//! process or against a server, and report throughput, latency, errors by
//! kind, memory and fuel.

mod plot;
mod report;
mod tail;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use plot::write_svg;
pub use report::{Distribution, LoadReport, SLOWEST, SlowRun};
pub use tail::TailCause;

use crate::grpc::proto;
use crate::modules::Module;
use crate::{Host, RunRequest};

/// When a load test stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many runs in total.
    Runs(u64),
    /// After this long (runs in flight then finish).
    Duration(Duration),
}

/// What to run against.
#[derive(Debug, Clone)]
pub enum Target {
    /// A host in this process.
    Local {
        /// The host.
        host: Host,
        /// The module, registered on it.
        module: Arc<Module>,
        /// The request every run repeats.
        request: RunRequest,
    },
    /// A chassis server.
    Remote {
        /// A connected client (cloned per worker; one HTTP/2 connection).
        client: proto::chassis_client::ChassisClient<tonic::transport::Channel>,
        /// The request every run repeats.
        request: proto::RunRequest,
    },
}

/// One finished run.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When it finished, from the start of the load.
    pub(crate) at: Duration,
    pub(crate) latency: Duration,
    /// `ok` or the error kind (borrowed for every kind the host names, so
    /// recording a run allocates nothing).
    pub(crate) outcome: Cow<'static, str>,
    pub(crate) fuel: Option<u64>,
    pub(crate) peak_memory: Option<u64>,
    /// The error's message, kept only for the first error of its kind.
    pub(crate) message: Option<String>,
    /// The worker that ran it.
    pub(crate) worker: u32,
    /// Runs that worker finished before it.
    pub(crate) nth: u64,
    /// Why it took as long as it did, when the load was asked
    /// (`--explain-tail`).
    pub(crate) cause: Option<TailCause>,
}

/// One run's result as the load sees it.
struct Ran {
    outcome: Cow<'static, str>,
    fuel: Option<u64>,
    peak_memory: Option<u64>,
    message: Option<String>,
}

/// Live counters a caller can watch (for a progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    /// Runs finished.
    pub done: AtomicU64,
    /// Runs in flight now.
    pub live: AtomicUsize,
    /// Most runs in flight at once.
    pub peak_live: AtomicUsize,
    /// Runs that did not end `ok`.
    pub errors: AtomicU64,
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn usage_from_metadata(status: &tonic::Status) -> (Option<u64>, Option<u64>) {
    let text = status
        .metadata()
        .get("chassis-usage")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let get = |key: &str| {
        text.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    (get("fuel"), get("peak_memory_bytes"))
}

impl Target {
    async fn run_once(&self) -> Ran {
        match self {
            Target::Local {
                host,
                module,
                request,
            } => match host.run(module, request.clone()).await {
                Ok(report) => Ran {
                    outcome: report.outcome_name().into(),
                    fuel: Some(report.usage.fuel_consumed),
                    peak_memory: Some(report.usage.peak_memory_bytes),
                    message: report.result.as_ref().err().map(|e| e.to_string()),
                },
                Err(e) => Ran {
                    outcome: e.kind().as_str().into(),
                    fuel: None,
                    peak_memory: None,
                    message: Some(e.to_string()),
                },
            },
            Target::Remote { client, request } => match client.clone().run(request.clone()).await {
                Ok(response) => {
                    let usage = response.into_inner().usage.unwrap_or_default();
                    Ran {
                        outcome: "ok".into(),
                        fuel: Some(usage.fuel_consumed),
                        peak_memory: Some(usage.peak_memory_bytes),
                        message: None,
                    }
                }
                Err(status) => {
                    let kind = crate::grpc::status::kind_of(&status).unwrap_or_else(|| {
                        format!("grpc-{:?}", status.code()).to_ascii_lowercase()
                    });
                    let (fuel, peak_memory) = usage_from_metadata(&status);
                    Ran {
                        outcome: kind.into(),
                        fuel,
                        peak_memory,
                        message: Some(status.message().to_string()),
                    }
                }
            },
        }
    }
}

/// Runs a load worker makes before it yields to the others on its thread.
const YIELD_EVERY: usize = 8;

/// Runs the load and reports. `progress` is updated as runs finish. With
/// `explain_tail`, the thread polling each run is read around each poll
/// (see [`TailCause`]) and the report counts the causes of its tail.
pub async fn run(
    target: Target,
    concurrency: usize,
    stop: Stop,
    progress: Arc<Progress>,
    explain_tail: bool,
) -> LoadReport {
    let concurrency = concurrency.max(1);
    let baseline_rss = rss_bytes();
    let start = Instant::now();
    let tickets = Arc::new(AtomicU64::new(0));
    let peak_rss = Arc::new(AtomicU64::new(baseline_rss));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let peak_rss = peak_rss.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak_rss.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let worker = u32::try_from(worker).unwrap_or(u32::MAX);
        let target = target.clone();
        let tickets = tickets.clone();
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            // Sized for this worker's share of a counted load, so the
            // samples of a long one are not copied as they grow. A timed
            // load grows its own: a guess reserved by each of 10,000
            // workers would count as every live sandbox's RSS.
            let mut samples = Vec::with_capacity(match stop {
                Stop::Runs(n) => usize::try_from(n / concurrency as u64 + 1)
                    .unwrap_or(0)
                    .min(1 << 20),
                Stop::Duration(_) => 0,
            });
            // Messages are kept for a worker's first error of each kind
            // only, so a load of a million failing runs holds a handful.
            let mut seen: Vec<Cow<'static, str>> = Vec::new();
            loop {
                let go = match stop {
                    Stop::Runs(n) => tickets.fetch_add(1, Ordering::Relaxed) < n,
                    Stop::Duration(d) => start.elapsed() < d,
                };
                if !go {
                    break;
                }
                let live = progress.live.fetch_add(1, Ordering::Relaxed) + 1;
                progress.peak_live.fetch_max(live, Ordering::Relaxed);
                let mut spent = explain_tail.then(tail::Spent::default);
                let began = Instant::now();
                let ran = match spent.as_mut() {
                    None => target.run_once().await,
                    // Each poll is read on the thread that makes it.
                    Some(spent) => {
                        let mut run = std::pin::pin!(target.run_once());
                        std::future::poll_fn(|cx| {
                            let before = tail::ThreadMarks::now();
                            let polled = run.as_mut().poll(cx);
                            spent.add(before, tail::ThreadMarks::now());
                            polled
                        })
                        .await
                    }
                };
                let latency = began.elapsed();
                let cause = spent.map(|spent| TailCause::of(latency, &spent));
                progress.live.fetch_sub(1, Ordering::Relaxed);
                progress.done.fetch_add(1, Ordering::Relaxed);
                if ran.outcome != "ok" {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                let message = match ran.message {
                    Some(m) if !seen.contains(&ran.outcome) => {
                        seen.push(ran.outcome.clone());
                        Some(m)
                    }
                    _ => None,
                };
                let nth = samples.len() as u64;
                samples.push(Sample {
                    worker,
                    nth,
                    at: start.elapsed(),
                    latency,
                    outcome: ran.outcome,
                    fuel: ran.fuel,
                    peak_memory: ran.peak_memory,
                    message,
                    cause,
                });
                // A short run completes in one poll, so without this a
                // worker would loop on its own runs and starve the others
                // (and the RSS sampler) queued on its thread: a run that
                // yielded at an epoch tick then waited for hundreds of
                // milliseconds, which measured the load generator, not
                // the host. Each load worker stands for a caller's
                // request task, and those end after one run. Yielding
                // after every run costs a scheduler round trip (an idle
                // worker's epoll) per run at concurrency 1, so it yields
                // after every few.
                if samples.len() % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
            }
            samples
        }));
    }
    let mut samples = Vec::with_capacity(match stop {
        Stop::Runs(n) => usize::try_from(n).unwrap_or(0).min(1 << 24),
        Stop::Duration(_) => 0,
    });
    for w in workers {
        if let Ok(mut s) = w.await {
            samples.append(&mut s);
        }
    }
    let elapsed = start.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    peak_rss.fetch_max(rss_bytes(), Ordering::Relaxed);
    LoadReport::build(
        &samples,
        elapsed,
        concurrency,
        baseline_rss,
        peak_rss.load(Ordering::Relaxed),
        progress.peak_live.load(Ordering::Relaxed),
        explain_tail,
    )
}
