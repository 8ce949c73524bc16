//! Scoped credentials: each sandbox gets exactly the secrets its policy
//! names, for exactly as long as it runs.
//!
//! A [`SecretProvider`] reads a policy's [`SecretGrant`]s: [`VaultProvider`]
//! from HashiCorp Vault (KV v2 and lease-bearing dynamic paths), or
//! [`LocalFileProvider`] from a TOML file for the embedded default. The host
//! resolves every grant before the sandbox starts (a grant that cannot be
//! read means the sandbox does not start), hands the values to the sandbox
//! in [`SecretValue`]s, redacts them from whatever the guest writes
//! ([`Redactor`]) and revokes every lease when the sandbox ends, whatever the
//! reason ([`LeaseRegistry`]).
//!
//! Values never appear in logs, metric labels, errors or audit records:
//! only secret names, paths and lease ids do.

mod leases;
mod local;
mod redact;
mod value;
mod vault;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

pub use leases::{LeaseGuard, LeaseRegistry, RETRY_BACKOFF_MAX};
pub use local::LocalFileProvider;
pub use redact::{RedactStream, Redactor};
pub use value::SecretValue;

/// The file the embedded default reads secrets from, under the data dir.
pub const DEFAULT_LOCAL_FILE: &str = "secrets.toml";
pub use vault::{AppRole, TokenSource, VaultOptions, VaultProvider};

use crate::error::ErrorKind;
use crate::policy::SecretGrant;

/// A boxed future, so [`SecretProvider`] stays object-safe without a macro.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where secrets come from.
///
/// Implementations read one grant at a time and revoke leases by id. They
/// bound every call by their own timeout, and their errors name addresses,
/// paths and keys, never values.
pub trait SecretProvider: Send + Sync + std::fmt::Debug {
    /// Where this provider reads from, for messages: `vault at <addr>` or
    /// `local secrets file <path>`.
    fn describe(&self) -> String;

    /// Reads `grant`. A dynamic grant creates a lease whose TTL is at most
    /// `max_ttl` (the sandbox's deadline).
    fn read<'a>(
        &'a self,
        grant: &'a SecretGrant,
        max_ttl: Duration,
    ) -> BoxFuture<'a, Result<Fetched, SecretError>>;

    /// Revokes the lease `lease_id` now.
    fn revoke<'a>(&'a self, lease_id: &'a str) -> BoxFuture<'a, Result<(), SecretError>>;

    /// Keeps the provider's own credentials fresh (logs in, renews a token
    /// past half its TTL, checks that it is still accepted), so an idle
    /// host's token does not lapse and a revoked one shows on `/health`.
    /// [`keep_alive`] calls it; the default does nothing.
    fn keep_alive(&self) -> BoxFuture<'_, Result<(), SecretError>> {
        Box::pin(async { Ok(()) })
    }

    /// How soon the provider's credentials are due for renewal, when that
    /// is known (`None`: no renewable credentials, or not logged in yet).
    fn renewal_due_in(&self) -> Option<Duration> {
        None
    }
}

/// The longest wait between two [`SecretProvider::keep_alive`] calls.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The shortest wait between two keep-alive calls, so a token about to
/// lapse (or one Vault keeps renewing with a TTL of a second) cannot turn
/// the loop into a busy one.
const KEEP_ALIVE_FLOOR: Duration = Duration::from_millis(200);

/// Keeps `provider`'s credentials fresh for as long as the future runs:
/// calls [`SecretProvider::keep_alive`] now and then every
/// [`KEEP_ALIVE_INTERVAL`], or sooner when the provider's token is due for
/// renewal earlier (a token with a 10 s TTL is renewed after 5 s instead of
/// lapsing before the next 15 s tick), and hands each result to `report`.
pub async fn keep_alive(
    provider: std::sync::Arc<dyn SecretProvider>,
    mut report: impl FnMut(Result<(), SecretError>),
) {
    loop {
        report(provider.keep_alive().await);
        let wait = provider
            .renewal_due_in()
            .map_or(KEEP_ALIVE_INTERVAL, |due| due.min(KEEP_ALIVE_INTERVAL))
            .max(KEEP_ALIVE_FLOOR);
        tokio::time::sleep(wait).await;
    }
}

/// A secret read for one run.
#[derive(Debug)]
pub struct Fetched {
    /// The value handed to the guest. For a dynamic secret, the lease's
    /// credentials as a JSON object (e.g. `{"password":..,"username":..}`).
    pub value: SecretValue,
    /// Further values to redact: each field of a dynamic secret's
    /// credentials, so a guest printing only the password is caught too.
    pub parts: Vec<SecretValue>,
    /// The lease to revoke when the run ends, for a dynamic secret.
    pub lease: Option<Lease>,
}

impl Fetched {
    /// A plain value with no lease.
    pub fn plain(value: SecretValue) -> Self {
        Self {
            value,
            parts: Vec::new(),
            lease: None,
        }
    }
}

/// A lease a dynamic secret came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Vault's lease id, e.g. `database/creds/ro/AbC123`.
    pub id: String,
    /// How long it lives unless revoked first.
    pub ttl: Duration,
}

/// Why a secret could not be read or a lease revoked. No variant ever holds
/// a secret value.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The provider could not be reached at all.
    #[error("vault at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The provider answered 403: this host may not read the path.
    #[error("permission denied reading `{path}` from {source_name}")]
    Forbidden {
        /// The path refused.
        path: String,
        /// Where it was read from.
        source_name: String,
    },
    /// No such secret, or no such key in it.
    #[error("no key `{key}` at `{path}` in {source_name}")]
    NotFound {
        /// The path read.
        path: String,
        /// The key looked for (`*` for a dynamic secret).
        key: String,
        /// Where it was read from.
        source_name: String,
    },
    /// The provider did not answer in time.
    #[error("vault at {addr} did not answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The provider answered with another error status.
    #[error("vault at {addr} answered {status} for `{path}`: {message}")]
    Server {
        /// The address.
        addr: String,
        /// The path requested.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Vault's error messages (never a value).
        message: String,
    },
    /// The host could not authenticate to Vault.
    #[error("authenticating to vault at {addr}: {message}")]
    Auth {
        /// The address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The provider is misconfigured, or there is none.
    #[error("{message}")]
    Config {
        /// What is wrong, naming the file or key.
        message: String,
    },
    /// A dynamic secret's lease could not be bounded by the sandbox's
    /// deadline, so it was revoked again and the run refused.
    #[error("lease `{lease_id}` for `{path}` lives {}, longer than the run's deadline of {}, and could not be shortened", humantime::format_duration(*ttl), humantime::format_duration(*max))]
    LeaseTooLong {
        /// The path read.
        path: String,
        /// The lease.
        lease_id: String,
        /// The TTL Vault gave.
        ttl: Duration,
        /// The deadline it had to fit.
        max: Duration,
    },
}

impl SecretError {
    /// The stable kind: 403 is `policy-denied` (PERMISSION_DENIED), a
    /// secret that is not there is `invalid-request` (the policy names
    /// something that does not exist), everything else is `unavailable`
    /// (UNAVAILABLE: retry once Vault or the host's credentials are back).
    pub fn kind(&self) -> ErrorKind {
        match self {
            SecretError::Forbidden { .. } => ErrorKind::PolicyDenied,
            SecretError::NotFound { .. } => ErrorKind::InvalidRequest,
            SecretError::Unreachable { .. }
            | SecretError::Timeout { .. }
            | SecretError::Server { .. }
            | SecretError::Auth { .. }
            | SecretError::Config { .. }
            | SecretError::LeaseTooLong { .. } => ErrorKind::Unavailable,
        }
    }

    /// The `result` label of `if_chassis_secret_reads_total` for this error.
    pub fn metric_result(&self) -> &'static str {
        match self {
            SecretError::Forbidden { .. } => "denied",
            _ => "error",
        }
    }
}

/// The secrets of one run: values by grant name, and the redactor built
/// from them.
#[derive(Debug, Default)]
pub struct Granted {
    values: std::collections::BTreeMap<String, SecretValue>,
    redactor: std::sync::Arc<Redactor>,
}

impl Granted {
    /// No secrets: what a run under a policy without grants gets.
    pub fn none() -> Self {
        Self::default()
    }

    /// The secrets fetched for a run, by grant name.
    pub fn new(fetched: Vec<(String, Fetched)>) -> Self {
        let mut redacted: Vec<(String, SecretValue)> = Vec::new();
        let mut values = std::collections::BTreeMap::new();
        for (name, f) in fetched {
            for part in f.parts {
                redacted.push((name.clone(), part));
            }
            redacted.push((name.clone(), f.value.clone()));
            values.insert(name, f.value);
        }
        let redactor = Redactor::new(redacted.iter().map(|(n, v)| (n.as_str(), v)));
        Self {
            values,
            redactor: std::sync::Arc::new(redactor),
        }
    }

    /// The value granted as `name`, if any.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.values.get(name)
    }

    /// The redactor for this run's output.
    pub fn redactor(&self) -> &std::sync::Arc<Redactor> {
        &self.redactor
    }
}
