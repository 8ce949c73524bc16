//! Structured log records a guest emits through the `host` interface.

use serde::Serialize;

use super::bindings::chassis::agent::host::Level;
use super::bounded::bounded;

/// Longest message or field value kept; longer ones are cut, so one record
/// cannot hold more than a bounded amount of host memory.
pub const MAX_LOG_TEXT: usize = 4096;
/// Longest field key kept.
pub const MAX_LOG_KEY: usize = 256;
/// Most fields kept per record.
pub const MAX_LOG_FIELDS: usize = 32;
/// Most bytes of log text (messages, keys and values) kept per run. With
/// the record cap it bounds what one run's logs hold in the host, whatever
/// sizes the guest passes: past it, records are dropped and counted.
pub const MAX_LOG_BYTES_PER_RUN: usize = 1024 * 1024;

/// One log record from a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
    /// Key/value fields in the order the guest gave them.
    pub fields: Vec<(String, String)>,
}

/// The records of one run, capped in count.
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    cap: u64,
    records: Vec<LogRecord>,
    /// Bytes of text kept so far, against [`MAX_LOG_BYTES_PER_RUN`].
    bytes: usize,
    dropped: u64,
    tap: Option<super::Tap>,
    redactor: Option<std::sync::Arc<crate::secrets::Redactor>>,
}

pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl LogBuffer {
    /// A buffer keeping at most `cap` records.
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap,
            records: Vec::new(),
            bytes: 0,
            dropped: 0,
            tap: None,
            redactor: None,
        }
    }

    /// Also sends each kept record to `tap`.
    pub(crate) fn with_tap(mut self, tap: Option<super::Tap>) -> Self {
        self.tap = tap;
        self
    }

    /// Replaces `redactor`'s values in every message, key and field value.
    pub(crate) fn with_redactor(
        mut self,
        redactor: &std::sync::Arc<crate::secrets::Redactor>,
    ) -> Self {
        if !redactor.is_empty() {
            self.redactor = Some(redactor.clone());
        }
        self
    }

    /// Adds a record, or counts it as dropped when the buffer is full (in
    /// records or in bytes). The guest's strings are only read: what is kept
    /// is a redacted, clipped copy no larger than the clip.
    pub(crate) fn push(
        &mut self,
        at_ms: u64,
        level: Level,
        message: &str,
        fields: &[(&str, &str)],
    ) {
        if self.records.len() as u64 >= self.cap || self.bytes >= MAX_LOG_BYTES_PER_RUN {
            self.dropped += 1;
            return;
        }
        let redactor = self.redactor.as_deref();
        let message = bounded(message, MAX_LOG_TEXT, redactor);
        let fields: Vec<(String, String)> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| {
                (
                    bounded(k, MAX_LOG_KEY, redactor),
                    bounded(v, MAX_LOG_TEXT, redactor),
                )
            })
            .collect();
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.bytes + size > MAX_LOG_BYTES_PER_RUN {
            self.bytes = MAX_LOG_BYTES_PER_RUN;
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        let record = LogRecord {
            at_ms,
            level: level_name(level),
            message,
            fields,
        };
        if let Some(tap) = &self.tap {
            let _ = tap.send(super::TapEvent::Log(record.clone()));
        }
        self.records.push(record);
    }

    /// The records kept and the number dropped.
    pub(crate) fn into_parts(self) -> (Vec<LogRecord>, u64) {
        (self.records, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_past_the_cap_are_counted_not_kept() {
        let mut logs = LogBuffer::new(2);
        for i in 0..5 {
            logs.push(i, Level::Info, &format!("m{i}"), &[]);
        }
        let (records, dropped) = logs.into_parts();
        assert_eq!(records.len(), 2);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let mut logs = LogBuffer::new(1);
        logs.push(0, Level::Warn, &"é".repeat(MAX_LOG_TEXT), &[]);
        let (records, _) = logs.into_parts();
        assert!(records[0].message.len() <= MAX_LOG_TEXT + '…'.len_utf8());
        assert!(records[0].message.ends_with('…'));
    }

    #[test]
    fn kept_bytes_per_run_are_capped_whatever_the_guest_passes() {
        let mut logs = LogBuffer::new(1_000_000);
        let big = "x".repeat(64 * 1024);
        let fields: Vec<(&str, &str)> = (0..64).map(|_| (big.as_str(), big.as_str())).collect();
        for i in 0..10_000 {
            logs.push(i, Level::Info, &big, &fields);
        }
        let (records, dropped) = logs.into_parts();
        let kept: usize = records
            .iter()
            .map(|r| {
                r.message.capacity()
                    + r.fields
                        .iter()
                        .map(|(k, v)| k.capacity() + v.capacity())
                        .sum::<usize>()
            })
            .sum();
        assert!(
            kept <= MAX_LOG_BYTES_PER_RUN + 64 * 1024,
            "kept {kept} bytes"
        );
        assert!(records.iter().all(|r| r.fields.len() == MAX_LOG_FIELDS));
        assert_eq!(records.len() as u64 + dropped, 10_000);
    }
}
