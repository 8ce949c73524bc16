//! Guest-supplied text cut to a bounded size, with granted secrets redacted.
//!
//! Every string a guest hands the host that the host keeps (log messages,
//! field keys and values, denial targets) passes through [`bounded`]: at
//! most `max` bytes are kept in a new allocation of that size, so a kept
//! record never holds the capacity of the guest's original copy, and no
//! granted value survives whole or in part.

use crate::secrets::Redactor;

/// Marks text that was cut.
const ELLIPSIS: char = '…';

/// `text` redacted and cut to at most `max` bytes (plus the ellipsis that
/// marks a cut), copied into a string of exactly that size.
///
/// Only the first `max` bytes plus the longest secret's length are scanned,
/// so redacting costs O(`max`) however long `text` is; a value that begins
/// inside the kept part is still seen whole, and a value cut by the scan
/// window is dropped rather than kept in part.
pub(crate) fn bounded(text: &str, max: usize, redactor: Option<&Redactor>) -> String {
    let redactor = redactor.filter(|r| !r.is_empty());
    let Some(redactor) = redactor else {
        return cut(text, max);
    };
    let window = floor_char_boundary(text, max.saturating_add(redactor.longest_value()));
    let redacted = if window < text.len() {
        redactor.redact_prefix(&text.as_bytes()[..window])
    } else {
        redactor.redact_bytes(text.as_bytes())
    };
    let redacted = String::from_utf8_lossy(&redacted);
    let was_cut = window < text.len();
    let mut out = cut(&redacted, max);
    if was_cut && !out.ends_with(ELLIPSIS) {
        out.push(ELLIPSIS);
    }
    out
}

/// The first `max` bytes of `text` (on a char boundary), in a new string of
/// exactly that size; an ellipsis marks a cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = floor_char_boundary(text, max);
    let mut out = String::with_capacity(end + ELLIPSIS.len_utf8());
    out.push_str(&text[..end]);
    out.push(ELLIPSIS);
    out
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    let mut end = at;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretValue;

    fn redactor(value: &str) -> Redactor {
        let v = SecretValue::new(value.to_string());
        Redactor::new([("pw", &v)])
    }

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(bounded("hello", 10, None), "hello");
    }

    #[test]
    fn long_text_is_cut_into_an_allocation_of_the_kept_size() {
        let long = "x".repeat(1 << 20);
        let out = bounded(&long, 100, None);
        assert_eq!(out.len(), 100 + ELLIPSIS.len_utf8());
        assert!(out.capacity() <= 100 + ELLIPSIS.len_utf8());
    }

    #[test]
    fn cuts_on_a_char_boundary() {
        let out = bounded(&"é".repeat(100), 7, None);
        assert_eq!(out, "ééé…");
    }

    #[test]
    fn a_value_inside_the_kept_part_is_redacted() {
        let r = redactor("hunter2hunter2");
        assert_eq!(
            bounded("pw=hunter2hunter2 ok", 100, Some(&r)),
            "pw=[REDACTED:pw] ok"
        );
    }

    #[test]
    fn a_value_straddling_the_cut_is_redacted_not_kept_in_part() {
        let r = redactor("hunter2hunter2");
        let text = format!("{}hunter2hunter2{}", "a".repeat(95), "b".repeat(1000));
        let out = bounded(&text, 100, Some(&r));
        assert!(!out.contains("hunter"), "{out}");
        assert!(out.starts_with(&"a".repeat(95)));
    }

    #[test]
    fn shrinking_replacements_pull_in_no_undecided_bytes() {
        // Many values before the cut shrink the text, pulling bytes from
        // past the scan window into the kept part; a value cut by the
        // window must not come with them.
        let value = "v".repeat(64);
        let r = redactor(&value);
        let text = format!("a{}", value.repeat(3));
        let out = bounded(&text, 64, Some(&r));
        assert!(!out.contains(&"v".repeat(16)), "{out}");
    }
}
