//! How the writer spells a record's line: the envelope (`seq`, `ts`,
//! `kind`, `fields`, `prev`, in [`super::record::Record`]'s order) and the
//! fields of a run's records, written straight into the write buffer.
//!
//! A run's record is most of the log under load, and serialising it
//! through serde (a flattened map, every key escaped, a timestamp string
//! formatted and allocated per record) was a measurable share of the
//! writer's time. Keys and punctuation are fixed bytes here; every value
//! that could need escaping (ids, outcomes, errors, kinds) still goes
//! through `serde_json`, so a line is always valid JSON whatever it holds.

use std::time::{SystemTime, UNIX_EPOCH};

use super::context::{CONTEXT_FIELD, RUNS_COLUMNS, RunOutcome, RunUsage};
use super::record::HexHash;

/// Length of a record's timestamp: `2026-12-03T01:11:34.299097Z`.
pub(crate) const TS_LEN: usize = 27;

/// Formats record timestamps (RFC 3339, UTC, microseconds), formatting the
/// date and time of day once per second instead of once per record.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// The second `prefix` spells, since the epoch.
    second: Option<u64>,
    /// `2026-12-03T01:11:34.` for `second`.
    prefix: [u8; 20],
}

impl Clock {
    /// Now, as a record's `ts`.
    pub(crate) fn now(&mut self) -> Timestamp {
        self.at(SystemTime::now())
    }

    /// `time` as a record's `ts`.
    pub(crate) fn at(&mut self, time: SystemTime) -> Timestamp {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs());
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            // `2026-12-03T01:11:34Z`: keep all but the `Z`, then the dot.
            self.prefix[..19].copy_from_slice(&text.as_bytes()[..19]);
            self.prefix[19] = b'.';
            self.second = Some(since.as_secs());
        }
        let mut ts = [0u8; TS_LEN];
        ts[..20].copy_from_slice(&self.prefix);
        let mut micros = since.subsec_micros();
        for digit in ts[20..26].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        ts[26] = b'Z';
        Timestamp(ts)
    }
}

/// A record's `ts`, inline.
#[derive(Clone, Copy)]
pub(crate) struct Timestamp([u8; TS_LEN]);

impl Timestamp {
    /// The timestamp's text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("digits and punctuation are ASCII")
    }
}

/// Appends `value` as JSON (a string escaped, a number in digits).
fn json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(&mut *out, value).expect("a string or number always serialises");
}

/// Appends `n` in digits.
fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a record's envelope up to its fields: `{"seq":..,"ts":..,
/// "kind":..,"fields":`. The fields follow, then [`close`].
pub(crate) fn open(out: &mut Vec<u8>, seq: u64, ts: &Timestamp, kind: &str) {
    out.extend_from_slice(br#"{"seq":"#);
    number(out, seq);
    out.extend_from_slice(br#","ts":""#);
    out.extend_from_slice(&ts.0);
    out.extend_from_slice(br#"","kind":"#);
    json(out, kind);
    out.extend_from_slice(br#","fields":"#);
}

/// Closes a record opened by [`open`] with its `prev`: 64 hex digits,
/// which JSON never escapes, so they are copied as they are.
pub(crate) fn close(out: &mut Vec<u8>, prev: &HexHash) {
    out.extend_from_slice(br#","prev":""#);
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(br#""}"#);
}

/// The fields of a `run.started` record: the run's id and context number.
pub(crate) fn start_fields(out: &mut Vec<u8>, run_id: &str, ctx: u64) {
    out.extend_from_slice(br#"{"run_id":"#);
    json(out, run_id);
    out.extend_from_slice(br#",""#);
    out.extend_from_slice(CONTEXT_FIELD.as_bytes());
    out.extend_from_slice(br#"":"#);
    number(out, ctx);
    out.push(b'}');
}

/// The fields of a `run` or `run.ended` record: the run's id, its context
/// number (left out when the writer never saw the run start), and how it
/// ended; absent figures are left out.
pub(crate) fn end_fields(out: &mut Vec<u8>, run_id: &str, ctx: Option<u64>, end: &RunOutcome) {
    out.extend_from_slice(br#"{"run_id":"#);
    json(out, run_id);
    if let Some(ctx) = ctx {
        out.extend_from_slice(br#",""#);
        out.extend_from_slice(CONTEXT_FIELD.as_bytes());
        out.extend_from_slice(br#"":"#);
        number(out, ctx);
    }
    out.extend_from_slice(br#","outcome":"#);
    json(out, end.outcome.as_ref());
    if let Some(error) = &end.error {
        out.extend_from_slice(br#","error":"#);
        json(out, error);
    }
    if let Some(usage) = &end.usage {
        out.extend_from_slice(br#","usage":{"fuel":"#);
        number(out, usage.fuel);
        out.extend_from_slice(br#","mem":"#);
        number(out, usage.mem);
        out.extend_from_slice(br#","wall_us":"#);
        number(out, usage.wall_us);
        out.extend_from_slice(br#","cpu_us":"#);
        number(out, usage.cpu_us);
        out.push(b'}');
    }
    if let Some(denials) = end.denials {
        out.extend_from_slice(br#","denials":"#);
        number(out, denials);
    }
    out.push(b'}');
}

/// The fields of a `runs` record: the context its runs share, the names of
/// a run's columns ([`RUNS_COLUMNS`]) and one array per run, in the order
/// they ended: `{"ctx":1,"cols":["run_id",...],"runs":[["9f..","ok",..],..]}`.
pub(crate) fn runs_fields<'a>(
    out: &mut Vec<u8>,
    ctx: u64,
    runs: impl IntoIterator<Item = (&'a str, &'a str, &'a RunUsage)>,
) {
    out.extend_from_slice(br#"{""#);
    out.extend_from_slice(CONTEXT_FIELD.as_bytes());
    out.extend_from_slice(br#"":"#);
    number(out, ctx);
    out.extend_from_slice(br#","cols":"#);
    out.extend_from_slice(RUNS_COLUMNS.as_bytes());
    out.extend_from_slice(br#","runs":["#);
    for (i, (run_id, outcome, usage)) in runs.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        json(out, run_id);
        out.push(b',');
        json(out, outcome);
        for n in [usage.fuel, usage.mem, usage.wall_us, usage.cpu_us] {
            out.push(b',');
            number(out, n);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::audit::context::RunUsage;
    use crate::audit::record::Record;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn timestamps_match_humantime_across_seconds_and_days() {
        let mut clock = Clock::default();
        let base = UNIX_EPOCH + Duration::from_secs(1_796_342_399); // a day's last second
        for offset_us in [0u64, 1, 999_999, 1_000_000, 1_000_001, 86_400_000_123] {
            let time = base + Duration::from_micros(offset_us);
            assert_eq!(
                clock.at(time).as_str(),
                humantime::format_rfc3339_micros(time).to_string(),
                "{offset_us} µs past the base"
            );
        }
        // Before the epoch: clamped to it, never a panic.
        assert_eq!(
            clock.at(UNIX_EPOCH - Duration::from_secs(5)).as_str(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn a_line_is_the_record_serde_reads_even_with_hostile_text_in_it() {
        let hostile = "quote \" backslash \\ newline \n nul \u{0} é 🦀 </script>";
        let end = RunOutcome {
            outcome: "trap".into(),
            error: Some(hostile.into()),
            usage: Some(RunUsage {
                fuel: u64::MAX,
                mem: 1_114_112,
                wall_us: 0,
                cpu_us: 39,
            }),
            denials: Some(3),
        };
        let ts = Clock::default().at(UNIX_EPOCH + Duration::from_micros(1_796_342_399_000_007));
        let mut out = Vec::new();
        open(&mut out, 42, &ts, "run\"kind");
        end_fields(&mut out, "run\"id", Some(7), &end);
        close(&mut out, &HexHash::genesis());
        let record: Record = serde_json::from_slice(&out).unwrap();
        assert_eq!(record.seq, 42);
        assert_eq!(record.ts, "2026-12-03T23:59:59.000007Z");
        assert_eq!(record.kind, "run\"kind");
        assert_eq!(record.prev, "0".repeat(64));
        assert_eq!(
            record.fields,
            json!({
                "run_id": "run\"id", "ctx": 7, "outcome": "trap", "error": hostile,
                "usage": {"fuel": u64::MAX, "mem": 1_114_112, "wall_us": 0, "cpu_us": 39},
                "denials": 3,
            })
        );
        assert!(!out.contains(&b'\n'), "one record, one line");
    }

    #[test]
    fn numbers_and_prev_are_the_json_serde_writes() {
        for n in [0, 7, 10, 999_999, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        let prev = HexHash::of(b"a line");
        let mut out = b"{\"a\":1".to_vec();
        close(&mut out, &prev);
        let value = parse(&out);
        assert_eq!(value["prev"], prev.as_str());
    }

    #[test]
    fn absent_figures_and_an_unknown_context_are_left_out() {
        let mut out = Vec::new();
        end_fields(&mut out, "r", None, &RunOutcome::new("cancelled"));
        assert_eq!(parse(&out), json!({"run_id": "r", "outcome": "cancelled"}));
        out.clear();
        start_fields(&mut out, "r", 1);
        assert_eq!(parse(&out), json!({"run_id": "r", "ctx": 1}));
    }
}
