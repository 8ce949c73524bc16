//! The one place errors become gRPC statuses.
//!
//! Each status carries the stable kind in the `chassis-error-kind` metadata,
//! so clients can branch on `out-of-fuel` vs `memory-limit`, which share
//! RESOURCE_EXHAUSTED.

use tonic::{Code, Status};

use crate::ErrorKind;

/// Metadata key holding the kebab-case [`ErrorKind`].
pub const KIND_HEADER: &str = "chassis-error-kind";

/// The gRPC code for each kind.
pub fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidModule | ErrorKind::InvalidRequest => Code::InvalidArgument,
        ErrorKind::PolicyDenied => Code::PermissionDenied,
        ErrorKind::OutOfFuel
        | ErrorKind::MemoryLimit
        | ErrorKind::Overloaded
        | ErrorKind::OutputLimit => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Trap | ErrorKind::GuestError => Code::Aborted,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::NotFound => Code::NotFound,
    }
}

/// A status for `kind` with `message`, tagged with the kind.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    let mut status = Status::new(code_for(kind), message);
    if let Ok(value) = kind.as_str().parse() {
        status.metadata_mut().insert(KIND_HEADER, value);
    }
    status
}

/// NOT_FOUND for a module or policy the host does not have.
pub fn not_found(what: &str, name: &str) -> Status {
    status(
        ErrorKind::NotFound,
        format!("no {what} `{name}` on this host"),
    )
}

/// The kind a status carries, if any (for clients).
pub fn kind_of(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(KIND_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_code_and_round_trips_in_metadata() {
        for kind in ErrorKind::ALL {
            let s = status(kind, "x");
            assert_eq!(s.code(), code_for(kind));
            assert_eq!(kind_of(&s).as_deref(), Some(kind.as_str()));
        }
    }
}
