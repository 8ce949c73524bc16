//! Replacing granted secret values in what a guest writes.
//!
//! Every byte a guest sends out through stdout, stderr, a log record, its
//! output or its error passes a [`Redactor`] built from the values granted to
//! that run: each occurrence of a value becomes `[REDACTED:<name>]`.
//!
//! Streams are redacted by a [`RedactStream`], which catches a value split
//! across writes by holding back the tail of each write that could be the
//! start of a value (at most the longest value's length less one byte) until
//! the next write or the end of the run decides it.
//!
//! What it cannot catch: a value the guest transforms before writing it
//! (reversed, base64-encoded, one byte per log record, interleaved with other
//! bytes). Redaction protects against accidents and the obvious leak; the
//! policy's grant is the real boundary.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::SecretValue;

/// The values of one run's secrets and what each is replaced with.
#[derive(Default)]
pub struct Redactor {
    /// (value bytes, replacement), longest value first.
    patterns: Vec<(Zeroizing<Vec<u8>>, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "replacements",
                &self.patterns.iter().map(|(_, r)| r).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Redactor {
    /// A redactor replacing each `(name, value)`'s value with
    /// `[REDACTED:<name>]`. Empty values are skipped: they cannot be found.
    pub fn new<'a>(values: impl IntoIterator<Item = (&'a str, &'a SecretValue)>) -> Self {
        let mut patterns: Vec<(Zeroizing<Vec<u8>>, String)> = values
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, v)| {
                (
                    Zeroizing::new(v.expose().as_bytes().to_vec()),
                    format!("[REDACTED:{name}]"),
                )
            })
            .collect();
        // Longest first, so a value containing another is replaced whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        patterns.dedup_by(|a, b| a.0 == b.0);
        Self { patterns }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The length in bytes of the longest value, 0 when there is none.
    pub fn longest_value(&self) -> usize {
        self.patterns.first().map_or(0, |(p, _)| p.len())
    }

    /// Redacts the start of `bytes` and returns what is decided: anything
    /// at the end that could still be the beginning of a value is left out.
    /// For text that is about to be cut: nothing cut off can leave part of a
    /// value in what is kept.
    pub fn redact_prefix(&self, bytes: &[u8]) -> Vec<u8> {
        if self.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        self.scan(bytes, false, &mut out);
        out
    }

    /// Redacts a complete byte string.
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        if self.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        self.scan(bytes, true, &mut out);
        out
    }

    /// Redacts a complete string.
    pub fn redact_str(&self, text: String) -> String {
        if self.is_empty() {
            return text;
        }
        let text = Zeroizing::new(text);
        let bytes = self.redact_bytes(text.as_bytes());
        // Values are whole UTF-8 strings, so replacing them keeps the text valid.
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// A streaming redactor for one output stream.
    pub fn stream(self: &Arc<Self>) -> RedactStream {
        RedactStream {
            redactor: self.clone(),
            pending: Zeroizing::new(Vec::new()),
        }
    }

    /// Appends `data` redacted to `out` and returns how many bytes of `data`
    /// were consumed. Unless `at_end`, stops at the first position whose rest
    /// could still become a value once more bytes arrive.
    fn scan(&self, data: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        'outer: while i < data.len() {
            let rest = &data[i..];
            if !at_end
                && self
                    .patterns
                    .iter()
                    .any(|(p, _)| rest.len() < p.len() && p.starts_with(rest))
            {
                return i;
            }
            for (p, replacement) in &self.patterns {
                if rest.starts_with(p) {
                    out.extend_from_slice(replacement.as_bytes());
                    i += p.len();
                    continue 'outer;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        i
    }
}

/// Redacts one stream written in pieces; see the module docs.
#[derive(Debug)]
pub struct RedactStream {
    redactor: Arc<Redactor>,
    /// Bytes held back because they may begin a value; zeroed when dropped.
    pending: Zeroizing<Vec<u8>>,
}

impl RedactStream {
    /// Redacts `bytes` and returns what can be released now.
    pub fn write(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.redactor.is_empty() {
            return bytes.to_vec();
        }
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        let used = self.redactor.scan(&self.pending, false, &mut out);
        self.pending.drain(..used);
        out
    }

    /// Releases whatever was held back, redacted: the stream has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        self.redactor.scan(&self.pending, true, &mut out);
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[(&str, &str)]) -> Arc<Redactor> {
        let values: Vec<(String, SecretValue)> = values
            .iter()
            .map(|(n, v)| (n.to_string(), SecretValue::new(v.to_string())))
            .collect();
        Arc::new(Redactor::new(values.iter().map(|(n, v)| (n.as_str(), v))))
    }

    #[test]
    fn a_whole_value_is_replaced_with_its_name() {
        let r = redactor(&[("db", "s3cr3t")]);
        assert_eq!(
            r.redact_str("pw=s3cr3t and s3cr3t".into()),
            "pw=[REDACTED:db] and [REDACTED:db]"
        );
    }

    #[test]
    fn a_value_split_across_writes_is_caught() {
        let r = redactor(&[("db", "s3cr3t")]);
        let mut s = r.stream();
        let mut out = s.write(b"pw=s3c");
        assert_eq!(out, b"pw=", "the possible start of the value is held back");
        out.extend(s.write(b"r"));
        out.extend(s.write(b"3t!"));
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "pw=[REDACTED:db]!");
    }

    #[test]
    fn a_held_back_tail_that_is_not_a_value_is_released_at_the_end() {
        let r = redactor(&[("db", "s3cr3t")]);
        let mut s = r.stream();
        let mut out = s.write(b"ends with s3c");
        out.extend(s.finish());
        assert_eq!(out, b"ends with s3c");
    }

    #[test]
    fn a_value_byte_by_byte_is_still_caught() {
        let r = redactor(&[("k", "abcdef")]);
        let mut s = r.stream();
        let mut out = Vec::new();
        for b in b"xxabcdefyy" {
            out.extend(s.write(&[*b]));
        }
        out.extend(s.finish());
        assert_eq!(out, b"xx[REDACTED:k]yy");
    }

    #[test]
    fn a_longer_value_containing_a_shorter_one_is_replaced_whole() {
        let r = redactor(&[("short", "abc"), ("long", "abcdef")]);
        let mut s = r.stream();
        let mut out = s.write(b"abc");
        out.extend(s.write(b"def abc"));
        out.extend(s.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[REDACTED:long] [REDACTED:short]"
        );
    }

    #[test]
    fn nothing_to_redact_passes_bytes_through() {
        let r = redactor(&[("empty", "")]);
        assert!(r.is_empty());
        assert_eq!(r.stream().write(b"abc"), b"abc");
    }

    #[test]
    fn the_debug_form_names_replacements_not_values() {
        let r = redactor(&[("db", "s3cr3t")]);
        let shown = format!("{r:?}");
        assert!(shown.contains("[REDACTED:db]"));
        assert!(!shown.contains("s3cr3t"));
    }
}
