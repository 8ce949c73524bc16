//! The limits one run is held to, and how a request may tighten them.
//!
//! Limits come from three places, each able only to tighten the one before:
//! the host caps (config `runtime:`), the policy, and the request.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Fuel given to a run when nothing tighter is asked: about ten seconds of
/// busy guest code on this class of machine.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Bytes of stdout and of stderr kept per run; the rest is counted and dropped.
pub const DEFAULT_OUTPUT_BYTES: u64 = 1024 * 1024;
/// Log records kept per run; the rest is counted and dropped.
pub const DEFAULT_LOG_RECORDS: u64 = 1000;

/// How a host meters busy guest code. It is compiled into every module the
/// host runs, so it is fixed when the host starts (`runtime.metering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metering {
    /// A fuel budget per run (about one unit per wasm instruction, checked
    /// at every basic block) and epoch deadlines: a run is stopped by its
    /// budget, its timeout or its CPU share, and its fuel is reported.
    #[default]
    Fuel,
    /// Epoch deadlines only: a run is stopped by its timeout or its CPU
    /// share, checked at loop headers and function entries every epoch
    /// tick, with no instruction budget and no fuel in its report. Cheaper
    /// for CPU-bound guests (no counter update per basic block).
    Epoch,
}

impl Metering {
    /// The name the configuration uses (`fuel`, `epoch`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metering::Fuel => "fuel",
            Metering::Epoch => "epoch",
        }
    }
}

/// Parses the configuration's name (as `chassis load --metering` takes it).
impl std::str::FromStr for Metering {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Metering::Fuel, Metering::Epoch]
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not `fuel` or `epoch`"))
    }
}

/// The limits a single run is held to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel budget (about one unit per wasm instruction); `None` is unmetered.
    pub fuel: Option<u64>,
    /// Largest linear memory the guest may grow to, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline for the whole run, instantiation included.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Bytes of stdout kept (and bytes of the returned output allowed).
    pub output_bytes: u64,
    /// Log records kept.
    pub log_records: u64,
    /// Share of one core the sandbox may keep busy, 1-100; above it the
    /// guest is paused at its next epoch tick until it is back under.
    pub cpu_percent: u8,
}

/// The most a host allows any run (`runtime:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// Largest fuel budget a run may ask for; `None` lets a run be unmetered.
    pub max_fuel: Option<u64>,
    /// `runtime.max_memory_mb` in bytes.
    pub max_memory_bytes: u64,
    /// `runtime.max_execution_time_seconds`.
    pub max_timeout: Duration,
    /// Largest stdout/stderr/output size.
    pub max_output_bytes: u64,
    /// Most log records per run.
    pub max_log_records: u64,
    /// `runtime.max_cpu_percent`: the most of one core any sandbox may use.
    pub max_cpu_percent: u8,
    /// `runtime.metering`: with [`Metering::Epoch`] no run has a fuel
    /// budget, and one asked for is refused ([`LimitsError::FuelNotMetered`]).
    pub metering: Metering,
}

impl Default for HostCaps {
    /// Production values: 512 MiB, 300 s, no fuel cap beyond the default
    /// budget, 16 MiB of output, 10,000 log records, a whole core.
    fn default() -> Self {
        Self {
            max_fuel: None,
            max_memory_bytes: 512 * 1024 * 1024,
            max_timeout: Duration::from_secs(300),
            max_output_bytes: 16 * 1024 * 1024,
            max_log_records: 10_000,
            max_cpu_percent: 100,
            metering: Metering::Fuel,
        }
    }
}

impl HostCaps {
    /// The limits a run gets when nothing tightens them: the caps, with the
    /// default fuel budget and output sizes where those are below the caps.
    pub fn default_limits(&self) -> Limits {
        let fuel = match self.metering {
            Metering::Fuel => Some(self.max_fuel.unwrap_or(DEFAULT_FUEL).min(DEFAULT_FUEL)),
            Metering::Epoch => None,
        };
        Limits {
            fuel,
            memory_bytes: self.max_memory_bytes,
            timeout: self.max_timeout,
            output_bytes: self.max_output_bytes.min(DEFAULT_OUTPUT_BYTES),
            log_records: self.max_log_records.min(DEFAULT_LOG_RECORDS),
            cpu_percent: self.max_cpu_percent,
        }
    }
}

/// Fuel asked for by a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuelRequest {
    /// A budget of this many units.
    Budget(u64),
    /// No fuel metering; only allowed when the host has no fuel cap.
    Unmetered,
}

/// What a request (or a policy) asks to tighten. Unset fields keep the
/// limit they are applied to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsRequest {
    /// Fuel budget.
    pub fuel: Option<FuelRequest>,
    /// Memory cap in bytes.
    pub memory_bytes: Option<u64>,
    /// Deadline.
    pub timeout: Option<Duration>,
    /// Output cap in bytes.
    pub output_bytes: Option<u64>,
    /// Log record cap.
    pub log_records: Option<u64>,
    /// CPU share cap, 1-100.
    pub cpu_percent: Option<u8>,
}

/// A request asked for more than the limits it is applied to allow.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LimitsError {
    /// A numeric limit above what is allowed.
    #[error("{limit} of {asked} is above the allowed {allowed}")]
    AboveCap {
        /// The limit's name as the user wrote it (`memory`, `fuel`, ...).
        limit: &'static str,
        /// What was asked.
        asked: String,
        /// The most allowed.
        allowed: String,
    },
    /// A fuel budget asked (by the policy or the request) of a host that
    /// does not meter fuel: refused rather than ignored, since whoever set
    /// it relies on it to stop the run.
    #[error(
        "a fuel budget of {asked} was asked, but this host does not meter fuel (runtime.metering = \"epoch\"): its runs are bounded by their timeout and CPU share"
    )]
    FuelNotMetered {
        /// The budget asked for.
        asked: u64,
    },
    /// A limit of zero, which would make every run fail.
    #[error("{limit} must be greater than zero")]
    Zero {
        /// The limit's name.
        limit: &'static str,
    },
}

fn tighten_u64(
    limit: &'static str,
    current: u64,
    asked: Option<u64>,
    show: fn(u64) -> String,
) -> Result<u64, LimitsError> {
    match asked {
        None => Ok(current),
        Some(0) => Err(LimitsError::Zero { limit }),
        Some(a) if a > current => Err(LimitsError::AboveCap {
            limit,
            asked: show(a),
            allowed: show(current),
        }),
        Some(a) => Ok(a),
    }
}

fn show_bytes(b: u64) -> String {
    if b.is_multiple_of(1024 * 1024) {
        format!("{} MiB", b / (1024 * 1024))
    } else {
        format!("{b} bytes")
    }
}

impl Limits {
    /// Applies `request` on top of these limits. Asking for more than these
    /// limits allow is an error naming the limit, never a silent clamp.
    pub fn tighten(&self, request: &LimitsRequest) -> Result<Limits, LimitsError> {
        let fuel = match (request.fuel, self.fuel) {
            (None, current) => current,
            (Some(FuelRequest::Budget(0)), _) => return Err(LimitsError::Zero { limit: "fuel" }),
            (Some(FuelRequest::Budget(n)), None) => Some(n),
            (Some(FuelRequest::Budget(n)), Some(cap)) => {
                Some(tighten_u64("fuel", cap, Some(n), |v| v.to_string())?)
            }
            (Some(FuelRequest::Unmetered), None) => None,
            (Some(FuelRequest::Unmetered), Some(cap)) => {
                return Err(LimitsError::AboveCap {
                    limit: "fuel",
                    asked: "unmetered".into(),
                    allowed: cap.to_string(),
                });
            }
        };
        let timeout = match request.timeout {
            None => self.timeout,
            Some(t) if t.is_zero() => return Err(LimitsError::Zero { limit: "timeout" }),
            Some(t) if t > self.timeout => {
                return Err(LimitsError::AboveCap {
                    limit: "timeout",
                    asked: humantime::format_duration(t).to_string(),
                    allowed: humantime::format_duration(self.timeout).to_string(),
                });
            }
            Some(t) => t,
        };
        Ok(Limits {
            fuel,
            memory_bytes: tighten_u64(
                "memory",
                self.memory_bytes,
                request.memory_bytes,
                show_bytes,
            )?,
            timeout,
            output_bytes: tighten_u64(
                "output",
                self.output_bytes,
                request.output_bytes,
                show_bytes,
            )?,
            log_records: tighten_u64("log records", self.log_records, request.log_records, |v| {
                v.to_string()
            })?,
            cpu_percent: tighten_u64(
                "cpu percent",
                u64::from(self.cpu_percent),
                request.cpu_percent.map(u64::from),
                |v| format!("{v}%"),
            )? as u8,
        })
    }

    /// The limits for a run: the host caps, tightened by the policy's
    /// limits, then by the request's. Fields neither sets get the host's
    /// defaults (fuel, output and log budgets below the caps).
    pub fn resolve(
        caps: &HostCaps,
        policy: &LimitsRequest,
        request: &LimitsRequest,
    ) -> Result<Limits, LimitsError> {
        if caps.metering == Metering::Epoch {
            for asked in [policy.fuel, request.fuel] {
                if let Some(FuelRequest::Budget(asked)) = asked {
                    return Err(LimitsError::FuelNotMetered { asked });
                }
            }
        }
        let ceiling = Limits {
            fuel: match caps.metering {
                Metering::Fuel => caps.max_fuel,
                Metering::Epoch => None,
            },
            memory_bytes: caps.max_memory_bytes,
            timeout: caps.max_timeout,
            output_bytes: caps.max_output_bytes,
            log_records: caps.max_log_records,
            cpu_percent: caps.max_cpu_percent,
        };
        let defaults = caps.default_limits();
        let mut limits = ceiling.tighten(policy)?.tighten(request)?;
        if request.fuel.is_none() && policy.fuel.is_none() {
            limits.fuel = defaults.fuel;
        }
        if request.output_bytes.is_none() && policy.output_bytes.is_none() {
            limits.output_bytes = defaults.output_bytes;
        }
        if request.log_records.is_none() && policy.log_records.is_none() {
            limits.log_records = defaults.log_records;
        }
        Ok(limits)
    }

    /// [`Limits::resolve`] with no policy limits.
    pub fn from_caps(caps: &HostCaps, request: &LimitsRequest) -> Result<Limits, LimitsError> {
        Self::resolve(caps, &LimitsRequest::default(), request)
    }
}

/// Serialises durations as humantime strings ("1s 500ms") so JSON reports
/// read naturally.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_can_only_tighten() {
        let caps = HostCaps::default();
        let base = Limits::from_caps(&caps, &LimitsRequest::default()).unwrap();
        let tighter = base
            .tighten(&LimitsRequest {
                memory_bytes: Some(16 << 20),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(tighter.memory_bytes, 16 << 20);
        assert_eq!(tighter.timeout, Duration::from_secs(1));
        let err = tighter
            .tighten(&LimitsRequest {
                memory_bytes: Some(32 << 20),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory of 32 MiB is above the allowed 16 MiB"
        );
    }

    #[test]
    fn unmetered_fuel_needs_an_uncapped_host() {
        let request = LimitsRequest {
            fuel: Some(FuelRequest::Unmetered),
            ..Default::default()
        };
        let open = Limits::from_caps(&HostCaps::default(), &request).unwrap();
        assert_eq!(open.fuel, None);
        let capped = HostCaps {
            max_fuel: Some(1000),
            ..HostCaps::default()
        };
        assert!(matches!(
            Limits::from_caps(&capped, &request),
            Err(LimitsError::AboveCap { limit: "fuel", .. })
        ));
    }

    #[test]
    fn an_epoch_metered_host_gives_no_fuel_and_refuses_a_budget_from_policy_or_request() {
        let caps = HostCaps {
            metering: Metering::Epoch,
            ..HostCaps::default()
        };
        let plain = Limits::from_caps(&caps, &LimitsRequest::default()).unwrap();
        assert_eq!(plain.fuel, None);
        assert_eq!(plain.timeout, caps.max_timeout);
        let unmetered = LimitsRequest {
            fuel: Some(FuelRequest::Unmetered),
            ..Default::default()
        };
        assert_eq!(Limits::from_caps(&caps, &unmetered).unwrap().fuel, None);
        let budget = LimitsRequest {
            fuel: Some(FuelRequest::Budget(5_000)),
            ..Default::default()
        };
        let refused = Limits::from_caps(&caps, &budget).unwrap_err();
        assert_eq!(refused, LimitsError::FuelNotMetered { asked: 5_000 });
        assert!(
            refused.to_string().contains("runtime.metering"),
            "{refused}"
        );
        assert_eq!(
            Limits::resolve(&caps, &budget, &LimitsRequest::default()).unwrap_err(),
            LimitsError::FuelNotMetered { asked: 5_000 }
        );
    }

    #[test]
    fn a_policy_tightens_the_caps_and_a_request_tightens_the_policy() {
        let caps = HostCaps::default();
        let policy = LimitsRequest {
            memory_bytes: Some(64 << 20),
            fuel: Some(FuelRequest::Budget(DEFAULT_FUEL * 2)),
            cpu_percent: Some(50),
            ..Default::default()
        };
        let limits = Limits::resolve(&caps, &policy, &LimitsRequest::default()).unwrap();
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.fuel, Some(DEFAULT_FUEL * 2));
        assert_eq!(limits.cpu_percent, 50);
        let looser = LimitsRequest {
            memory_bytes: Some(128 << 20),
            ..Default::default()
        };
        assert!(Limits::resolve(&caps, &policy, &looser).is_err());
        let hungry = LimitsRequest {
            cpu_percent: Some(80),
            ..Default::default()
        };
        let err = Limits::resolve(&caps, &policy, &hungry).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cpu percent of 80% is above the allowed 50%"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let caps = HostCaps::default();
        let err = Limits::from_caps(
            &caps,
            &LimitsRequest {
                timeout: Some(Duration::ZERO),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err, LimitsError::Zero { limit: "timeout" });
    }

    #[test]
    fn limits_serialise_with_readable_durations() {
        let limits = HostCaps::default().default_limits();
        let json = serde_json::to_value(&limits).unwrap();
        assert_eq!(json["timeout"], "5m");
        let back: Limits = serde_json::from_value(json).unwrap();
        assert_eq!(back, limits);
    }
}
