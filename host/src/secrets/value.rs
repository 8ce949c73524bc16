//! A secret value that never prints and is wiped from memory when dropped.

use std::fmt;

use zeroize::Zeroizing;

/// A secret's value: zeroed when dropped, `[REDACTED]` when debugged or
/// displayed, so it cannot reach a log line or an error by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps `value`; the caller's `String` moves in, so no copy is left behind.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself. Call only where it is handed to the guest or the
    /// redactor; never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty (an empty value cannot be redacted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> serde::Deserialize<'de> for SecretValue {
    /// Reads a string straight into a zeroizing value (for the local file).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let v = SecretValue::new("hunter2".into());
        assert_eq!(format!("{v:?}"), "[REDACTED]");
        assert_eq!(format!("{v}"), "[REDACTED]");
        assert_eq!(format!("{:?}", Some(&v)), "Some([REDACTED])");
        assert_eq!(v.expose(), "hunter2");
    }
}
