//! The events the host records, each with its fields, so a record's kind
//! and field names are fixed in one place (`audit show --run` filters on
//! `run_id`, `module` and `caller`; a misspelt field would silently drop
//! records from its answer).
//!
//! A run's own records (`run.started`, `run.ended`, `run`) go through
//! [`super::AuditLog::run_started`] and [`super::AuditLog::run_ended`],
//! which share the run's context; the writer's own (`checkpoint`,
//! `key.rotated`, `log.pruned`, `log.recovered`) are written by the writer.

use serde::Serialize;
use serde_json::Value;

/// Defines [`Event`] and its record kinds from one list.
macro_rules! events {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $kind:literal {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ),* $(,)?) => {
        /// One audited event. Serialized with its fields as the record's
        /// `fields`, under its record kind.
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "kind", content = "fields")]
        pub enum Event<'a> {
            $(
                $(#[$doc])*
                #[serde(rename = $kind)]
                #[allow(missing_docs, reason = "each field is named for what it holds")]
                $variant { $( $(#[$field_meta])* $field: $ty ),* },
            )*
        }

        impl Event<'_> {
            /// The record kind, e.g. `module.registered`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Self::$variant { .. } => $kind, )*
                }
            }
        }
    };
}

events! {
    /// `chassis serve` started.
    HostStart = "host.start" {
        version: &'a str,
        listen: Option<String>,
        tls: bool,
        policies: usize,
    },
    /// `chassis serve` stopped.
    HostStop = "host.stop" { reason: &'a str },
    /// A policy was loaded at start.
    PolicyLoaded = "policy.loaded" {
        policy: &'a str,
        sha256: &'a str,
        file: Option<String>,
    },
    /// A request was refused before it reached a sandbox.
    RequestRefused = "request.refused" {
        rpc: &'a str,
        caller: &'a str,
        reason: &'a str,
        kind: &'a str,
        message: &'a str,
    },
    /// A module was registered (`world` is `agent` or `command`).
    ModuleRegistered = "module.registered" {
        module: &'a str,
        world: &'a str,
        size_bytes: u64,
        caller: &'a str,
    },
    /// A module was removed.
    ModuleRemoved = "module.removed" { module: &'a str, caller: &'a str },
    /// A run asked for a capability its policy does not grant.
    CapabilityDenied = "capability.denied" {
        run_id: &'a str,
        kind: &'a str,
        target: &'a str,
        reason: &'a str,
    },
    /// A granted secret was read for a run (names and lease ids only).
    SecretGranted = "secret.granted" {
        run_id: &'a str,
        name: &'a str,
        path: &'a str,
        lease_id: Option<&'a str>,
    },
    /// A granted secret could not be read; the run was refused.
    SecretReadFailed = "secret.read_failed" {
        run_id: &'a str,
        name: &'a str,
        path: &'a str,
        error: String,
    },
    /// A run's lease was revoked (`attempts` when it took retries).
    LeaseRevoked = "secret.lease_revoked" {
        run_id: &'a str,
        lease_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
    },
    /// Revoking a lease failed (retried while the host runs; at shutdown
    /// the lease is left to expire at its TTL).
    LeaseRevokeFailed = "secret.lease_revoke_failed" {
        #[serde(skip_serializing_if = "Option::is_none")]
        run_id: Option<&'a str>,
        lease_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
        error: &'a str,
    },
    /// A runbook was stored for any host to run.
    RunbookSubmitted = "runbook.submitted" {
        runbook: &'a str,
        name: &'a str,
        caller: &'a str,
        steps: usize,
        revision: i64,
    },
    /// Every step of a runbook is terminal.
    RunbookFinished = "runbook.finished" { runbook: &'a str, state: &'a str },
    /// This host claimed a step.
    StepClaimed = "step.claimed" {
        runbook: &'a str,
        step: &'a str,
        fence: i64,
        attempt: u32,
        holder: &'a str,
    },
    /// This host's lease lapsed mid-step: its run was cancelled.
    StepAbandoned = "step.abandoned" {
        runbook: &'a str,
        step: &'a str,
        fence: i64,
        attempt: u32,
        holder: &'a str,
        reason: &'a str,
    },
    /// A step's result was written (`state` completed, failed or skipped).
    StepFinished = "step.finished" {
        runbook: &'a str,
        step: &'a str,
        fence: i64,
        attempt: u32,
        state: &'a str,
        run_id: &'a str,
        error: Option<String>,
    },
    /// A step was handed back, to retry (`state` retried) or uncounted
    /// (`state` released).
    StepRetrying = "step.retrying" {
        runbook: &'a str,
        step: &'a str,
        fence: i64,
        attempt: u32,
        state: &'a str,
        run_id: &'a str,
        error: Option<String>,
    },
    /// A result was refused by the fence: another host holds the step.
    StepFenced = "step.fenced" {
        runbook: &'a str,
        step: &'a str,
        fence: i64,
        attempt: u32,
        run_id: &'a str,
    },
}

impl Event<'_> {
    /// The record's `fields`.
    pub fn fields(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut record)) => record.remove("fields").unwrap_or(Value::Null),
            // Every field is a string, number, bool or option of one.
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_kind_and_its_named_fields() {
        let e = Event::CapabilityDenied {
            run_id: "r1",
            kind: "secret",
            target: "db",
            reason: "not granted",
        };
        assert_eq!(e.kind(), "capability.denied");
        assert_eq!(
            e.fields(),
            serde_json::json!({ "run_id": "r1", "kind": "secret", "target": "db", "reason": "not granted" })
        );
        // Options the record always names stay as null; the ones it names
        // only when known are left out.
        let granted = Event::SecretGranted {
            run_id: "r",
            name: "n",
            path: "p",
            lease_id: None,
        };
        assert_eq!(granted.fields()["lease_id"], Value::Null);
        assert!(
            granted
                .fields()
                .as_object()
                .unwrap()
                .contains_key("lease_id")
        );
        let revoked = Event::LeaseRevoked {
            run_id: "r",
            lease_id: "l",
            attempts: None,
        };
        assert_eq!(
            revoked.fields(),
            serde_json::json!({ "run_id": "r", "lease_id": "l" })
        );
    }
}
