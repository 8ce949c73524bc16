//! Structured log records a guest emits through the `host` interface.

use serde::Serialize;

use super::bindings::chassis::agent::host::Level;

/// Longest message or field value kept; longer ones are cut, so one record
/// cannot hold more than a bounded amount of host memory.
pub const MAX_LOG_TEXT: usize = 4096;
/// Most fields kept per record.
pub const MAX_LOG_FIELDS: usize = 32;

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

fn clip(mut text: String) -> String {
    if text.len() > MAX_LOG_TEXT {
        let mut end = MAX_LOG_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl LogBuffer {
    /// A buffer keeping at most `cap` records.
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap,
            records: Vec::new(),
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

    /// Adds a record, or counts it as dropped when the buffer is full.
    pub(crate) fn push(
        &mut self,
        at_ms: u64,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        if self.records.len() as u64 >= self.cap {
            self.dropped += 1;
            return;
        }
        // Redact before clipping, so a value cut at the clip is still caught.
        let redact = |text: String| match &self.redactor {
            Some(r) => r.redact_str(text),
            None => text,
        };
        let message = redact(message);
        let fields = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| (clip(redact(k)), clip(redact(v))))
            .collect();
        let record = LogRecord {
            at_ms,
            level: level_name(level),
            message: clip(message),
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
            logs.push(i, Level::Info, format!("m{i}"), vec![]);
        }
        let (records, dropped) = logs.into_parts();
        assert_eq!(records.len(), 2);
        assert_eq!(dropped, 3);
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let mut logs = LogBuffer::new(1);
        logs.push(0, Level::Warn, "é".repeat(MAX_LOG_TEXT), vec![]);
        let (records, _) = logs.into_parts();
        assert!(records[0].message.len() <= MAX_LOG_TEXT + '…'.len_utf8());
        assert!(records[0].message.ends_with('…'));
    }
}
