//! The load report: what a load tester reads at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{Sample, TailCause};

/// Percentiles of one quantity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Distribution {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Values over ten times the median: the tail a percentile hides.
    pub over_10x_p50: u64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Distribution {
    /// Percentiles of `values` (empty gives zeros).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let at =
            |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
        let p50 = at(0.50);
        Self {
            min: values[0],
            p50,
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
            over_10x_p50: values.iter().filter(|v| over_10x(**v, p50)).count() as u64,
            max: values[values.len() - 1],
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// Whether `value` is in the tail [`Distribution::over_10x_p50`] counts.
fn over_10x(value: f64, p50: f64) -> bool {
    value > p50 * 10.0
}

/// How many of a load's slowest runs its report names.
pub const SLOWEST: usize = 10;

/// One of a load's slowest runs: when it started, and which worker's
/// how-manieth run it was, so a tail can be told apart from warm-up (a
/// worker's first run) and placed against what else happened then.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowRun {
    /// When it started, milliseconds from the start of the load.
    pub started_ms: f64,
    /// Its latency, microseconds.
    pub latency_us: f64,
    /// The load worker that ran it (0 to concurrency - 1).
    pub worker: u32,
    /// Runs that worker had finished before it (0: its first).
    pub nth: u64,
    /// `ok` or the error kind.
    pub outcome: String,
}

/// Everything `chassis load` reports.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Runs finished.
    pub runs: u64,
    /// Concurrency asked for.
    pub concurrency: usize,
    /// Wall time of the whole load, seconds.
    pub duration_s: f64,
    /// Runs per second over the whole load.
    pub throughput_per_s: f64,
    /// Latency per run, microseconds.
    pub latency_us: Distribution,
    /// Runs over 10x the p50 latency that were not their worker's first:
    /// the tail without the first wave, whose runs typically pay for
    /// something fresh (a pool slot's first use in-process, the connection
    /// under `--remote`).
    pub warm_over_10x_p50: u64,
    /// Runs by outcome (`ok` or an error kind).
    pub outcomes: BTreeMap<String, u64>,
    /// Runs that did not end `ok`.
    pub errors: u64,
    /// The first error message seen for each error kind, so a surprising
    /// kind can be read rather than guessed at.
    pub first_errors: BTreeMap<String, String>,
    /// RSS before the load, bytes.
    pub baseline_rss_bytes: u64,
    /// Largest RSS seen, bytes.
    pub peak_rss_bytes: u64,
    /// Most runs in flight at once.
    pub peak_live_sandboxes: usize,
    /// (peak RSS - baseline) / peak live sandboxes, bytes.
    pub rss_per_live_sandbox_bytes: u64,
    /// Fuel per run.
    pub fuel: Distribution,
    /// Peak linear memory per run, bytes.
    pub peak_memory_bytes: Distribution,
    /// Runs finished in each second of the load.
    pub throughput_by_second: Vec<u64>,
    /// The [`SLOWEST`] slowest runs, slowest first.
    pub slowest: Vec<SlowRun>,
    /// Audit log bytes written per run, when the load kept one
    /// (`chassis load --audit`): the log's growth over the load, signed
    /// checkpoints included, divided by the runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_bytes_per_run: Option<f64>,
    /// Why the warm runs over 10x p50 were slow, by [`TailCause`] (every
    /// cause named, with its count), when the load was asked
    /// (`chassis load --explain-tail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_causes: Option<BTreeMap<TailCause, u64>>,
    /// Every latency, microseconds, for plots (not serialized).
    #[serde(skip)]
    pub latencies_us: Vec<f64>,
}

impl LoadReport {
    pub(crate) fn build(
        samples: &[Sample],
        elapsed: Duration,
        concurrency: usize,
        baseline_rss: u64,
        peak_rss: u64,
        peak_live: usize,
        explained: bool,
    ) -> Self {
        let mut counted = BTreeMap::<&str, u64>::new();
        for s in samples {
            *counted.entry(&s.outcome).or_insert(0) += 1;
        }
        let outcomes = counted
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        let errors = samples.iter().filter(|s| s.outcome != "ok").count() as u64;
        let mut first_errors = BTreeMap::new();
        for s in samples {
            if let Some(message) = &s.message {
                first_errors
                    .entry(s.outcome.to_string())
                    .or_insert_with(|| message.clone());
            }
        }
        let seconds = elapsed.as_secs() as usize + 1;
        let mut by_second = vec![0u64; seconds];
        for s in samples {
            let i = (s.at.as_secs() as usize).min(seconds - 1);
            by_second[i] += 1;
        }
        let latencies: Vec<f64> = samples
            .iter()
            .map(|s| s.latency.as_secs_f64() * 1e6)
            .collect();
        let latency_us = Distribution::of(latencies.clone());
        let warm_tail = || {
            samples
                .iter()
                .zip(&latencies)
                .filter(|(s, l)| s.nth > 0 && over_10x(**l, latency_us.p50))
                .map(|(s, _)| s)
        };
        let warm_over_10x_p50 = warm_tail().count() as u64;
        let tail_causes = explained.then(|| {
            let mut counts: BTreeMap<TailCause, u64> =
                TailCause::ALL.iter().map(|c| (*c, 0)).collect();
            for s in warm_tail() {
                *counts
                    .entry(s.cause.unwrap_or(TailCause::Unexplained))
                    .or_default() += 1;
            }
            counts
        });
        Self {
            runs: samples.len() as u64,
            concurrency,
            duration_s: elapsed.as_secs_f64(),
            throughput_per_s: samples.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_us,
            warm_over_10x_p50,
            outcomes,
            errors,
            first_errors,
            baseline_rss_bytes: baseline_rss,
            peak_rss_bytes: peak_rss,
            peak_live_sandboxes: peak_live,
            rss_per_live_sandbox_bytes: peak_rss.saturating_sub(baseline_rss)
                / peak_live.max(1) as u64,
            fuel: Distribution::of(
                samples
                    .iter()
                    .filter_map(|s| s.fuel)
                    .map(|f| f as f64)
                    .collect(),
            ),
            peak_memory_bytes: Distribution::of(
                samples
                    .iter()
                    .filter_map(|s| s.peak_memory)
                    .map(|m| m as f64)
                    .collect(),
            ),
            throughput_by_second: by_second,
            slowest: slowest(samples),
            audit_bytes_per_run: None,
            tail_causes,
            latencies_us: latencies,
        }
    }

    /// The report as a person reads it.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let l = &self.latency_us;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            out,
            "runs            {} at concurrency {} in {:.2} s",
            self.runs, self.concurrency, self.duration_s
        );
        let _ = writeln!(out, "throughput      {:.0} runs/s", self.throughput_per_s);
        let _ = writeln!(
            out,
            "latency         p50 {:.0} µs | p95 {:.0} µs | p99 {:.0} µs | p99.9 {:.0} µs | max {:.0} µs | {} runs over 10x p50 ({} after each worker's first)",
            l.p50, l.p95, l.p99, l.p999, l.max, l.over_10x_p50, self.warm_over_10x_p50
        );
        if let Some(worst) = self.slowest.first() {
            let starts: Vec<String> = self
                .slowest
                .iter()
                .take(3)
                .map(|r| {
                    format!(
                        "{:.1} ms (worker {}, its run {})",
                        r.started_ms,
                        r.worker,
                        r.nth + 1
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "slowest         {:.0} µs; the {} slowest started at {}",
                worst.latency_us,
                starts.len(),
                starts.join(", ")
            );
        }
        if let Some(causes) = &self.tail_causes {
            let named: Vec<String> = causes
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{n} {}", c.as_str()))
                .collect();
            let _ = writeln!(
                out,
                "tail causes     {}",
                if named.is_empty() {
                    "no warm run over 10x p50".to_string()
                } else {
                    named.join(" | ")
                }
            );
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "outcomes        {}", outcomes.join(" | "));
        for (kind, message) in &self.first_errors {
            let _ = writeln!(out, "first {kind:<10} {message}");
        }
        let _ = writeln!(
            out,
            "memory          peak RSS {:.1} MiB (baseline {:.1} MiB) | peak live sandboxes {} | RSS per live sandbox {:.0} KiB",
            mib(self.peak_rss_bytes),
            mib(self.baseline_rss_bytes),
            self.peak_live_sandboxes,
            self.rss_per_live_sandbox_bytes as f64 / 1024.0
        );
        let _ = writeln!(
            out,
            "fuel per run    p50 {:.0} | p99 {:.0} | max {:.0}",
            self.fuel.p50, self.fuel.p99, self.fuel.max
        );
        let _ = writeln!(
            out,
            "guest memory    p50 {:.0} KiB | p99 {:.0} KiB | max {:.0} KiB",
            self.peak_memory_bytes.p50 / 1024.0,
            self.peak_memory_bytes.p99 / 1024.0,
            self.peak_memory_bytes.max / 1024.0
        );
        if let Some(bytes) = self.audit_bytes_per_run {
            let _ = writeln!(out, "audit log       {bytes:.0} bytes per run");
        }
        out
    }
}

/// The [`SLOWEST`] slowest of `samples`, slowest first, in one pass that
/// keeps only those (a load keeps millions of samples).
fn slowest(samples: &[Sample]) -> Vec<SlowRun> {
    let mut top: Vec<&Sample> = Vec::with_capacity(SLOWEST + 1);
    for s in samples {
        if top.len() == SLOWEST && top.last().is_some_and(|t| s.latency <= t.latency) {
            continue;
        }
        let at = top.partition_point(|t| t.latency >= s.latency);
        top.insert(at, s);
        top.truncate(SLOWEST);
    }
    top.into_iter()
        .map(|s| SlowRun {
            started_ms: s.at.saturating_sub(s.latency).as_secs_f64() * 1e3,
            latency_us: s.latency.as_secs_f64() * 1e6,
            worker: s.worker,
            nth: s.nth,
            outcome: s.outcome.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `ok` run of `micros`, worker `worker`'s `nth`.
    fn sample(worker: u32, nth: u64, micros: u64) -> Sample {
        Sample {
            at: Duration::from_millis(nth + 1),
            latency: Duration::from_micros(micros),
            outcome: "ok".into(),
            fuel: None,
            peak_memory: None,
            message: None,
            worker,
            nth,
            cause: None,
        }
    }

    #[test]
    fn percentiles_pick_the_right_samples() {
        let d = Distribution::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (d.min, d.p50, d.p95, d.p99, d.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        let mut tail: Vec<f64> = vec![10.0; 998];
        tail.extend([101.0, 5000.0]);
        let d = Distribution::of(tail);
        assert_eq!((d.p999, d.over_10x_p50, d.max), (101.0, 2, 5000.0));
        assert_eq!(Distribution::of(vec![]), Distribution::default());
    }

    #[test]
    fn a_workers_first_run_is_left_out_of_the_warm_tail() {
        let mut samples: Vec<Sample> = (0..2)
            .flat_map(|w| (1..50).map(move |n| sample(w, n, 10)))
            .collect();
        // Both workers' first runs are slow (cold slots), and one later run.
        samples.extend([sample(0, 0, 900), sample(1, 0, 800), sample(1, 50, 700)]);
        let r = LoadReport::build(&samples, Duration::from_millis(60), 2, 0, 0, 2, false);
        assert_eq!((r.latency_us.over_10x_p50, r.warm_over_10x_p50), (3, 1));
        assert!(
            r.render()
                .contains("3 runs over 10x p50 (1 after each worker's first)")
        );
        // Picked out of 101 samples: the three slow ones first, then the
        // rest at 10 µs.
        let picked: Vec<(u32, u64, f64)> = r
            .slowest
            .iter()
            .map(|s| (s.worker, s.nth, s.latency_us.round()))
            .collect();
        assert_eq!(picked.len(), SLOWEST);
        assert_eq!(
            &picked[..3],
            &[(0, 0, 900.0), (1, 0, 800.0), (1, 50, 700.0)]
        );
        assert!(picked[3..].iter().all(|p| p.2 == 10.0));
    }

    #[test]
    fn the_report_adds_up() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                at: Duration::from_millis(i * 150),
                latency: Duration::from_micros(100 + i),
                outcome: if i % 5 == 0 {
                    "out-of-fuel".into()
                } else {
                    "ok".into()
                },
                fuel: Some(1000),
                peak_memory: Some(65536),
                message: (i % 5 == 0).then(|| format!("out of fuel in run {i}")),
                worker: (i % 2) as u32,
                nth: i / 2,
                cause: None,
            })
            .collect();
        let r = LoadReport::build(
            &samples,
            Duration::from_millis(1500),
            2,
            1000,
            3000,
            4,
            false,
        );
        assert_eq!(r.runs, 10);
        assert_eq!(r.errors, 2);
        assert_eq!(r.outcomes["ok"], 8);
        assert_eq!(
            r.first_errors,
            BTreeMap::from([(
                "out-of-fuel".to_string(),
                "out of fuel in run 0".to_string()
            )])
        );
        assert!(
            r.render()
                .contains("first out-of-fuel out of fuel in run 0")
        );
        assert_eq!(r.throughput_by_second.iter().sum::<u64>(), 10);
        // Every latency is within 10x the p50 of ~104 µs.
        assert_eq!((r.latency_us.over_10x_p50, r.warm_over_10x_p50), (0, 0));
        // Run 9 is the slowest (109 µs), finished at 1350 ms, so started
        // 109 µs before; worker 1's fifth run.
        let worst = &r.slowest[0];
        assert_eq!(
            (worst.worker, worst.nth, worst.outcome.as_str()),
            (1, 4, "ok")
        );
        assert!((worst.latency_us - 109.0).abs() < 1e-6);
        assert!((worst.started_ms - 1349.891).abs() < 1e-6);
        let latencies: Vec<f64> = r.slowest.iter().map(|s| s.latency_us).collect();
        assert_eq!(latencies.len(), SLOWEST);
        assert!(latencies.windows(2).all(|w| w[0] >= w[1]));
        assert!(r.render().contains(
            "slowest         109 µs; the 3 slowest started at 1349.9 ms (worker 1, its run 5)"
        ));
        assert_eq!(r.rss_per_live_sandbox_bytes, 500);
        // Not asked: no causes reported.
        assert_eq!(r.tail_causes, None);
        assert!(!r.render().contains("tail causes"));
    }

    #[test]
    fn tail_causes_count_the_warm_runs_over_10x_p50_only() {
        let sample = |nth: u64, micros: u64, cause| Sample {
            cause: Some(cause),
            ..sample(0, nth, micros)
        };
        // 100 quick runs, two slow by preemption, one stolen, and a slow
        // first run (left out, as in the warm count).
        let mut samples: Vec<Sample> = (1..=100).map(|n| sample(n, 10, TailCause::OnCpu)).collect();
        samples.extend([
            sample(0, 5000, TailCause::PageFaults),
            sample(101, 400, TailCause::Preempted),
            sample(102, 300, TailCause::Preempted),
            sample(103, 200, TailCause::Stolen),
            // Not over 10x p50: its cause is not counted.
            sample(104, 90, TailCause::Blocked),
        ]);
        let r = LoadReport::build(&samples, Duration::from_millis(200), 1, 0, 0, 1, true);
        assert_eq!(r.warm_over_10x_p50, 3);
        let causes = r.tail_causes.clone().unwrap();
        assert_eq!(causes.len(), TailCause::ALL.len());
        assert_eq!(causes[&TailCause::Preempted], 2);
        assert_eq!(causes[&TailCause::Stolen], 1);
        assert_eq!(causes.values().sum::<u64>(), r.warm_over_10x_p50);
        assert!(
            r.render()
                .contains("tail causes     2 preempted | 1 stolen\n")
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tail_causes"]["on-cpu"], 0);
        assert_eq!(json["tail_causes"]["page-faults"], 0);
        // Asked, with nothing in the tail: every cause at 0, and said so.
        let quiet = LoadReport::build(
            &samples[..100],
            Duration::from_millis(200),
            1,
            0,
            0,
            1,
            true,
        );
        assert_eq!(quiet.warm_over_10x_p50, 0);
        assert!(
            quiet
                .tail_causes
                .as_ref()
                .unwrap()
                .values()
                .all(|n| *n == 0)
        );
        assert!(
            quiet
                .render()
                .contains("tail causes     no warm run over 10x p50")
        );
    }
}
