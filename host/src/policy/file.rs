//! The on-disk TOML form of a policy and its validation.
//!
//! Every value that can be wrong keeps its span so errors point at the exact
//! line and column. Unknown keys are errors (`deny_unknown_fields`): a typo
//! like `fuell` must not silently become "no limit".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::network::{Endpoint, NetworkPolicy};
use super::{Mode, Policy, PolicyLimits, Preopen, SecretGrant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    name: Spanned<String>,
    description: Option<String>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
    #[serde(default)]
    callers: Vec<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    filesystem: Vec<RawPreopen>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    timeout: Option<Spanned<String>>,
    cpu_percent: Option<Spanned<u64>>,
    output_kb: Option<Spanned<u64>>,
    concurrent_runs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreopen {
    host: Spanned<String>,
    guest: Spanned<String>,
    mode: Spanned<Mode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    path: Spanned<String>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    dynamic: bool,
    env: Option<Spanned<String>>,
}

/// A validation failure at a byte span of the source.
pub(super) struct Invalid {
    pub(super) span: std::ops::Range<usize>,
    pub(super) message: String,
}

fn invalid<T>(span: std::ops::Range<usize>, message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        span,
        message: message.into(),
    })
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn positive(field: &str, value: &Option<Spanned<u64>>, max: u64) -> Result<Option<u64>, Invalid> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() == 0 => {
            invalid(v.span(), format!("`{field}` must be greater than zero"))
        }
        Some(v) if *v.get_ref() > max => {
            invalid(v.span(), format!("`{field}` must be at most {max}"))
        }
        Some(v) => Ok(Some(*v.get_ref())),
    }
}

impl RawPolicy {
    pub(super) fn validate(self) -> Result<Policy, Invalid> {
        let name = self.name.get_ref().clone();
        if !is_ident(&name) {
            return invalid(
                self.name.span(),
                "`name` must be 1-64 characters of a-z, 0-9, `-`, `_` or `.`",
            );
        }
        let mut modules = Vec::new();
        for m in &self.modules {
            let id = m.get_ref().strip_prefix("sha256:").unwrap_or(m.get_ref());
            if id.len() != 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return invalid(
                    m.span(),
                    "a module pin is a sha256: 64 lower-case hex characters",
                );
            }
            if modules.contains(&id.to_string()) {
                return invalid(m.span(), format!("module `{id}` is pinned twice"));
            }
            modules.push(id.to_string());
        }
        let mut callers = Vec::new();
        for c in &self.callers {
            let caller = c.get_ref().trim();
            if caller.is_empty() {
                return invalid(c.span(), "a caller cannot be empty");
            }
            if caller == "*" {
                return invalid(c.span(), "`*` is not allowed: name each caller");
            }
            callers.push(caller.to_string());
        }
        let limits = self.limits.validate()?;
        let mut preopens: Vec<Preopen> = Vec::new();
        for p in &self.filesystem {
            let host = p.host.get_ref();
            let guest = p.guest.get_ref();
            if !host.starts_with('/') {
                return invalid(p.host.span(), "`host` must be an absolute path");
            }
            if host.split('/').any(|c| c == "..") {
                return invalid(p.host.span(), "`host` must not contain `..`");
            }
            if !guest.starts_with('/') || guest.split('/').any(|c| c == ".." || c == ".") {
                return invalid(
                    p.guest.span(),
                    "`guest` must be an absolute path without `.` or `..`",
                );
            }
            if preopens.iter().any(|o| &o.guest == guest) {
                return invalid(
                    p.guest.span(),
                    format!("guest path `{guest}` is mapped twice"),
                );
            }
            if let Some(other) = preopens
                .iter()
                .find(|o| &o.host == host && o.mode != *p.mode.get_ref())
            {
                return invalid(
                    p.mode.span(),
                    format!(
                        "`{host}` is already mapped as `{}`; one directory cannot be both",
                        other.mode
                    ),
                );
            }
            let preopen = Preopen {
                host: host.clone(),
                guest: guest.clone(),
                mode: *p.mode.get_ref(),
            };
            if let Some((other, relation)) = super::roots::overlap(&preopen, &preopens) {
                return invalid(
                    p.host.span(),
                    format!(
                        "`{host}` ({}) {relation} `{}` ({}), which is also mapped; \
                         a guest writing one could redirect or read the other",
                        preopen.mode, other.host, other.mode
                    ),
                );
            }
            preopens.push(preopen);
        }
        let mut allow = Vec::new();
        for entry in &self.network.allow {
            let endpoint =
                Endpoint::parse(entry.get_ref()).or_else(|m| invalid(entry.span(), m))?;
            if allow.contains(&endpoint) {
                return invalid(entry.span(), format!("`{endpoint}` is listed twice"));
            }
            allow.push(endpoint);
        }
        allow.sort();
        let mut env = BTreeMap::new();
        for (k, v) in &self.env {
            if !is_env_name(k.get_ref()) {
                return invalid(
                    k.span(),
                    format!("`{}` is not a valid environment variable name", k.get_ref()),
                );
            }
            env.insert(k.get_ref().clone(), v.get_ref().clone());
        }
        let mut secrets = BTreeMap::new();
        for (k, s) in &self.secrets {
            let secret_name = k.get_ref();
            if !is_ident(secret_name) {
                return invalid(
                    k.span(),
                    "a secret name must be 1-64 characters of a-z, 0-9, `-`, `_` or `.`",
                );
            }
            let path = s.path.get_ref().trim_matches('/');
            if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "..") {
                return invalid(
                    s.path.span(),
                    "`path` must be a Vault-style path like `secret/app/db`",
                );
            }
            match (&s.key, s.dynamic) {
                (Some(key), true) => {
                    return invalid(
                        key.span(),
                        "a dynamic secret has no `key`: the whole lease's credentials are granted",
                    );
                }
                (None, false) => {
                    return invalid(
                        s.path.span(),
                        format!("secret `{secret_name}` needs a `key` (or `dynamic = true`)"),
                    );
                }
                _ => {}
            }
            if let Some(var) = &s.env {
                if !is_env_name(var.get_ref()) {
                    return invalid(
                        var.span(),
                        format!(
                            "`{}` is not a valid environment variable name",
                            var.get_ref()
                        ),
                    );
                }
                if env.contains_key(var.get_ref()) {
                    return invalid(
                        var.span(),
                        format!(
                            "`{}` is also set in [env]; a variable cannot have two sources",
                            var.get_ref()
                        ),
                    );
                }
                if secrets
                    .values()
                    .any(|g: &SecretGrant| g.env.as_deref() == Some(var.get_ref()))
                {
                    return invalid(
                        var.span(),
                        format!("`{}` is injected by two secrets", var.get_ref()),
                    );
                }
            }
            secrets.insert(
                secret_name.clone(),
                SecretGrant {
                    path: path.to_string(),
                    key: s.key.as_ref().map(|k| k.get_ref().clone()),
                    dynamic: s.dynamic,
                    env: s.env.as_ref().map(|e| e.get_ref().clone()),
                },
            );
        }
        Ok(Policy {
            name,
            description: self.description.unwrap_or_default(),
            source: None,
            sha256: String::new(),
            modules,
            callers,
            limits,
            preopens,
            network: NetworkPolicy { allow },
            env,
            secrets,
        })
    }
}

impl RawLimits {
    fn validate(&self) -> Result<PolicyLimits, Invalid> {
        let timeout = match &self.timeout {
            None => None,
            Some(t) => {
                let d: Duration = humantime::parse_duration(t.get_ref()).or_else(|e| {
                    invalid(
                        t.span(),
                        format!("`timeout`: {e} (write e.g. `30s` or `1m 30s`)"),
                    )
                })?;
                if d.is_zero() {
                    return invalid(t.span(), "`timeout` must be greater than zero");
                }
                Some(d)
            }
        };
        Ok(PolicyLimits {
            fuel: positive("fuel", &self.fuel, u64::MAX)?,
            memory_mb: positive("memory_mb", &self.memory_mb, 1 << 20)?,
            timeout,
            cpu_percent: positive("cpu_percent", &self.cpu_percent, 100)?.map(|p| p as u8),
            output_kb: positive("output_kb", &self.output_kb, 1 << 30)?,
            concurrent_runs: positive("concurrent_runs", &self.concurrent_runs, 100_000)?
                .map(|n| n as u32),
        })
    }
}
