//! The stable kinds every failure maps to.
//!
//! A kind is the contract with callers: the CLI turns it into an exit code,
//! the gRPC layer into a status code, dashboards into a label. Messages may
//! improve over time; kinds and codes do not change.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong, as a stable machine-readable category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The wasm bytes are malformed, or not a component of a world chassis runs.
    InvalidModule,
    /// The request itself is wrong: a limit out of range, an unreadable input.
    InvalidRequest,
    /// The run's policy forbids what was asked.
    PolicyDenied,
    /// The guest burnt its whole fuel budget.
    OutOfFuel,
    /// The guest ran past its wall-clock deadline.
    DeadlineExceeded,
    /// The guest asked for more linear memory (or tables, or instances) than allowed.
    MemoryLimit,
    /// The guest trapped: a panic, stack overflow, bad memory access.
    Trap,
    /// The guest returned an error on purpose, or a command exited non-zero.
    GuestError,
    /// A dependency the run needs (a secret store, a claim store) is unreachable.
    Unavailable,
    /// Something failed inside the host; a bug or an environment problem.
    Internal,
    /// The host is at capacity (every sandbox slot busy); retry later.
    Overloaded,
    /// The guest's result was larger than the run's output limit.
    OutputLimit,
    /// The module, policy or runbook named is not on this host.
    NotFound,
}

impl ErrorKind {
    /// Every kind, in exit-code order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::InvalidModule,
        ErrorKind::InvalidRequest,
        ErrorKind::PolicyDenied,
        ErrorKind::OutOfFuel,
        ErrorKind::DeadlineExceeded,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::GuestError,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Overloaded,
        ErrorKind::OutputLimit,
        ErrorKind::NotFound,
    ];

    /// The kebab-case name used in JSON, logs, metrics and gRPC details.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidModule => "invalid-module",
            ErrorKind::InvalidRequest => "invalid-request",
            ErrorKind::PolicyDenied => "policy-denied",
            ErrorKind::OutOfFuel => "out-of-fuel",
            ErrorKind::DeadlineExceeded => "deadline-exceeded",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Trap => "trap",
            ErrorKind::GuestError => "guest-error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::OutputLimit => "output-limit",
            ErrorKind::NotFound => "not-found",
        }
    }

    /// The process exit code `chassis run` uses for this kind. Codes 1 and 2
    /// stay with generic failures and usage errors, as is conventional.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidModule => 10,
            ErrorKind::InvalidRequest => 11,
            ErrorKind::PolicyDenied => 12,
            ErrorKind::OutOfFuel => 13,
            ErrorKind::DeadlineExceeded => 14,
            ErrorKind::MemoryLimit => 15,
            ErrorKind::Trap => 16,
            ErrorKind::GuestError => 17,
            ErrorKind::Unavailable => 18,
            ErrorKind::Internal => 19,
            ErrorKind::Overloaded => 20,
            ErrorKind::OutputLimit => 21,
            ErrorKind::NotFound => 22,
        }
    }
}

/// A name that is no [`ErrorKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an error kind")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for ErrorKind {
    type Err = UnknownKind;

    /// Parses the kebab-case name [`ErrorKind::as_str`] gives.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| UnknownKind(name.to_string()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_clear_of_generic_codes() {
        let mut codes: Vec<i32> = ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(codes.iter().all(|&c| c > 2 && c < 126));
    }

    #[test]
    fn kind_names_parse_back() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
        }
        assert_eq!(
            "ok".parse::<ErrorKind>(),
            Err(UnknownKind("ok".to_string()))
        );
    }

    #[test]
    fn kind_names_round_trip_through_json() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
        }
    }
}
