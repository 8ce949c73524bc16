//! `chassis policy diff`: capabilities added and removed between two
//! versions of a policy, flagged by risk, as a reviewer wants on a pull request.

use std::fmt;

use serde::Serialize;

use super::{Mode, Policy};

/// How much a change widens what a module can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Narrows capabilities or only changes words.
    Low,
    /// Widens within the same kind of access.
    Medium,
    /// Grants a new kind of reach: writes, network, secrets, any module.
    High,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Risk::Low => "low",
            Risk::Medium => "MEDIUM",
            Risk::High => "HIGH",
        })
    }
}

/// Whether a capability appeared, disappeared or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New in the new policy.
    Added,
    /// Gone from the new policy.
    Removed,
    /// Present in both, different.
    Changed,
}

/// One difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// `filesystem`, `network`, `env`, `secrets`, `limits`, `modules`, `callers`, `name`.
    pub area: &'static str,
    /// The item, e.g. a path or host.
    pub item: String,
    /// Before, when it existed.
    pub before: Option<String>,
    /// After, when it exists.
    pub after: Option<String>,
    /// How much it widens access.
    pub risk: Risk,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.kind {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed => '~',
        };
        write!(
            f,
            "{sign} [{:>6}] {}: {}",
            self.risk.to_string(),
            self.area,
            self.item
        )?;
        match (&self.before, &self.after) {
            (Some(b), Some(a)) => write!(f, " ({b} -> {a})"),
            (None, Some(a)) => write!(f, " ({a})"),
            (Some(b), None) => write!(f, " (was {b})"),
            (None, None) => Ok(()),
        }
    }
}

fn change(
    kind: ChangeKind,
    area: &'static str,
    item: impl Into<String>,
    before: Option<String>,
    after: Option<String>,
    risk: Risk,
) -> Change {
    Change {
        kind,
        area,
        item: item.into(),
        before,
        after,
        risk,
    }
}

/// Compares a limit: `None` means "host default", the loosest value.
fn limit<T: PartialOrd + fmt::Display>(
    out: &mut Vec<Change>,
    item: &str,
    old: Option<T>,
    new: Option<T>,
) {
    let show = |v: &Option<T>| {
        v.as_ref()
            .map_or("host default".to_string(), |v| v.to_string())
    };
    let looser = match (&old, &new) {
        (Some(o), Some(n)) => n > o,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (None, None) => return,
    };
    if old == new {
        return;
    }
    out.push(change(
        ChangeKind::Changed,
        "limits",
        item,
        Some(show(&old)),
        Some(show(&new)),
        if looser { Risk::Medium } else { Risk::Low },
    ));
}

/// Every capability difference from `old` to `new`, riskiest first.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    use ChangeKind::*;
    let mut out = Vec::new();
    if old.name != new.name {
        out.push(change(
            Changed,
            "name",
            "name",
            Some(old.name.clone()),
            Some(new.name.clone()),
            Risk::Low,
        ));
    }
    // Module pins: an empty list means "any module".
    match (old.modules.is_empty(), new.modules.is_empty()) {
        (false, true) => out.push(change(
            Removed,
            "modules",
            "every module pin: any module may now run",
            None,
            None,
            Risk::High,
        )),
        _ => {
            for m in new.modules.iter().filter(|m| !old.modules.contains(m)) {
                let risk = if old.modules.is_empty() {
                    Risk::Low
                } else {
                    Risk::Medium
                };
                out.push(change(Added, "modules", m.clone(), None, None, risk));
            }
            for m in old.modules.iter().filter(|m| !new.modules.contains(m)) {
                if !new.modules.is_empty() {
                    out.push(change(Removed, "modules", m.clone(), None, None, Risk::Low));
                }
            }
        }
    }
    for c in new.callers.iter().filter(|c| !old.callers.contains(c)) {
        out.push(change(
            Added,
            "callers",
            c.clone(),
            None,
            None,
            Risk::Medium,
        ));
    }
    for c in old.callers.iter().filter(|c| !new.callers.contains(c)) {
        out.push(change(Removed, "callers", c.clone(), None, None, Risk::Low));
    }
    for p in &new.preopens {
        match old.preopens.iter().find(|o| o.host == p.host) {
            None => {
                let risk = if p.mode == Mode::ReadWrite {
                    Risk::High
                } else {
                    Risk::Medium
                };
                out.push(change(
                    Added,
                    "filesystem",
                    p.host.clone(),
                    None,
                    Some(format!("{} as {}", p.mode, p.guest)),
                    risk,
                ));
            }
            Some(o) if o.mode != p.mode || o.guest != p.guest => {
                let risk = if p.mode == Mode::ReadWrite && o.mode == Mode::ReadOnly {
                    Risk::High
                } else {
                    Risk::Low
                };
                out.push(change(
                    Changed,
                    "filesystem",
                    p.host.clone(),
                    Some(format!("{} as {}", o.mode, o.guest)),
                    Some(format!("{} as {}", p.mode, p.guest)),
                    risk,
                ));
            }
            Some(_) => {}
        }
    }
    for o in old
        .preopens
        .iter()
        .filter(|o| !new.preopens.iter().any(|p| p.host == o.host))
    {
        out.push(change(
            Removed,
            "filesystem",
            o.host.clone(),
            Some(format!("{} as {}", o.mode, o.guest)),
            None,
            Risk::Low,
        ));
    }
    for e in new
        .network
        .allow
        .iter()
        .filter(|e| !old.network.allow.contains(e))
    {
        out.push(change(
            Added,
            "network",
            e.to_string(),
            None,
            None,
            Risk::High,
        ));
    }
    for e in old
        .network
        .allow
        .iter()
        .filter(|e| !new.network.allow.contains(e))
    {
        out.push(change(
            Removed,
            "network",
            e.to_string(),
            None,
            None,
            Risk::Low,
        ));
    }
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => out.push(change(
                Added,
                "env",
                k.clone(),
                None,
                Some(v.clone()),
                Risk::Medium,
            )),
            Some(o) if o != v => out.push(change(
                Changed,
                "env",
                k.clone(),
                Some(o.clone()),
                Some(v.clone()),
                Risk::Low,
            )),
            Some(_) => {}
        }
    }
    for (k, v) in old.env.iter().filter(|(k, _)| !new.env.contains_key(*k)) {
        out.push(change(
            Removed,
            "env",
            k.clone(),
            Some(v.clone()),
            None,
            Risk::Low,
        ));
    }
    let describe = |g: &super::SecretGrant| {
        let mut s = match &g.key {
            Some(k) => format!("{}#{k}", g.path),
            None => format!("{} (dynamic)", g.path),
        };
        if let Some(e) = &g.env {
            s.push_str(&format!(", env {e}"));
        }
        s
    };
    for (k, g) in &new.secrets {
        match old.secrets.get(k) {
            None => out.push(change(
                Added,
                "secrets",
                k.clone(),
                None,
                Some(describe(g)),
                Risk::High,
            )),
            Some(o) if o != g => {
                let risk =
                    if o.path != g.path || o.key != g.key || (g.env.is_some() && o.env.is_none()) {
                        Risk::High
                    } else {
                        Risk::Low
                    };
                out.push(change(
                    Changed,
                    "secrets",
                    k.clone(),
                    Some(describe(o)),
                    Some(describe(g)),
                    risk,
                ));
            }
            Some(_) => {}
        }
    }
    for (k, g) in old
        .secrets
        .iter()
        .filter(|(k, _)| !new.secrets.contains_key(*k))
    {
        out.push(change(
            Removed,
            "secrets",
            k.clone(),
            Some(describe(g)),
            None,
            Risk::Low,
        ));
    }
    let (o, n) = (&old.limits, &new.limits);
    limit(&mut out, "fuel", o.fuel, n.fuel);
    limit(&mut out, "memory_mb", o.memory_mb, n.memory_mb);
    limit(
        &mut out,
        "timeout",
        o.timeout
            .map(|d| humantime::format_duration(d).to_string())
            .map(DurationText),
        n.timeout
            .map(|d| humantime::format_duration(d).to_string())
            .map(DurationText),
    );
    limit(&mut out, "cpu_percent", o.cpu_percent, n.cpu_percent);
    limit(&mut out, "output_kb", o.output_kb, n.output_kb);
    limit(
        &mut out,
        "concurrent_runs",
        o.concurrent_runs.map(u64::from),
        n.concurrent_runs.map(u64::from),
    );
    out.sort_by_key(|c| std::cmp::Reverse(c.risk));
    out
}

/// A duration shown as humantime text but ordered by its length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DurationText(String);

impl PartialOrd for DurationText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let a = humantime::parse_duration(&self.0).ok()?;
        let b = humantime::parse_duration(&other.0).ok()?;
        a.partial_cmp(&b)
    }
}

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
