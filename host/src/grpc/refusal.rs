//! Refusing a request: one typed status, one audit record, one counter.
//!
//! Every refusal made before a request runs (a malformed module id, a
//! certificate naming a reserved identity, a management call from a
//! non-admin, a runbook read by a stranger, an amplifying runbook) goes
//! through [`refuse`], so each is a status with its `chassis-error-kind`,
//! a `request.refused` audit record naming the caller, a warning in the
//! server log and a count in `if_chassis_requests_refused_total{reason}`.

use tonic::Status;

use super::status::status;
use crate::telemetry::{Refusal, record_refused};
use crate::{ErrorKind, Host};

/// The status refusing `rpc` from `caller` for `reason`, audited and counted.
pub(super) fn refuse(
    host: &Host,
    rpc: &'static str,
    caller: &str,
    reason: Refusal,
    kind: ErrorKind,
    message: impl Into<String>,
) -> Status {
    let message = message.into();
    record_refused(reason);
    tracing::warn!(
        rpc,
        caller,
        reason = reason.as_str(),
        kind = kind.as_str(),
        %message,
        "request refused"
    );
    // A refusal stands whether or not the log takes it: failing it closed
    // would turn an audit outage into answering the attacker differently.
    let _ = host.audit_event(|| crate::audit::Event::RequestRefused {
        rpc,
        caller,
        reason: reason.as_str(),
        kind: kind.as_str(),
        message: &message,
    });
    status(kind, message)
}

/// Refuses `id` unless it is a module id (64 lower-case hex digits).
pub(super) fn check_module_id(
    host: &Host,
    rpc: &'static str,
    caller: &str,
    id: &str,
) -> Result<(), Status> {
    crate::modules::check_id(id).map(|_| ()).map_err(|e| {
        refuse(
            host,
            rpc,
            caller,
            Refusal::ModuleId,
            ErrorKind::InvalidRequest,
            e.to_string(),
        )
    })
}
