//! `CHASSIS_*` environment variables that override the config file.

use std::path::PathBuf;

use super::{Config, ConfigError, LogFormat};

type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a number in range"))
}

/// Every override: the variable, the key it sets, and how.
pub const ENV_OVERRIDES: &[(&str, &str, Setter)] = &[
    ("CHASSIS_LISTEN", "server.listen", |c, v| {
        c.server.listen = v.parse().map_err(|_| format!("`{v}` is not host:port"))?;
        Ok(())
    }),
    (
        "CHASSIS_ETCD_ENDPOINTS",
        "coordinator.etcd.endpoints (and backend: etcd)",
        |c, v| {
            let endpoints: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            if endpoints.is_empty() {
                return Err("no endpoints; give a comma-separated list".into());
            }
            c.coordinator.backend = super::CoordinatorBackend::Etcd;
            match &mut c.coordinator.etcd {
                Some(etcd) => etcd.endpoints = endpoints,
                None => {
                    c.coordinator.etcd = Some(super::Etcd {
                        endpoints,
                        timeout_seconds: 5,
                        ca_cert: None,
                        cert_file: None,
                        key_file: None,
                    })
                }
            }
            Ok(())
        },
    ),
    (
        "CHASSIS_TASK_CLAIM_TTL_SECONDS",
        "coordinator.task_claim_ttl_seconds",
        |c, v| {
            c.coordinator.task_claim_ttl_seconds = num(v)?;
            Ok(())
        },
    ),
    ("CHASSIS_HOST_ID", "coordinator.host_id", |c, v| {
        c.coordinator.host_id = Some(v.to_string());
        Ok(())
    }),
    ("CHASSIS_DATA_DIR", "data_dir", |c, v| {
        c.data_dir = PathBuf::from(v);
        Ok(())
    }),
    ("CHASSIS_POLICIES_DIR", "policies_dir", |c, v| {
        c.policies_dir = Some(PathBuf::from(v));
        Ok(())
    }),
    ("CHASSIS_MAX_MEMORY_MB", "runtime.max_memory_mb", |c, v| {
        c.runtime.max_memory_mb = num(v)?;
        Ok(())
    }),
    (
        "CHASSIS_MAX_CPU_PERCENT",
        "runtime.max_cpu_percent",
        |c, v| {
            c.runtime.max_cpu_percent = num(v)?;
            Ok(())
        },
    ),
    (
        "CHASSIS_MAX_EXECUTION_TIME_SECONDS",
        "runtime.max_execution_time_seconds",
        |c, v| {
            c.runtime.max_execution_time_seconds = num(v)?;
            Ok(())
        },
    ),
    ("CHASSIS_POOL_MIN_SIZE", "sandbox_pool.min_size", |c, v| {
        c.sandbox_pool.min_size = num(v)?;
        Ok(())
    }),
    ("CHASSIS_POOL_MAX_SIZE", "sandbox_pool.max_size", |c, v| {
        c.sandbox_pool.max_size = num(v)?;
        Ok(())
    }),
    (
        "CHASSIS_QUEUE_TIMEOUT_MS",
        "sandbox_pool.queue_timeout_ms",
        |c, v| {
            c.sandbox_pool.queue_timeout_ms = num(v)?;
            Ok(())
        },
    ),
    ("CHASSIS_METRICS_ENABLED", "metrics.enabled", |c, v| {
        c.metrics.enabled = num(v)?;
        Ok(())
    }),
    ("CHASSIS_METRICS_PORT", "metrics.port", |c, v| {
        c.metrics.port = num(v)?;
        Ok(())
    }),
    ("CHASSIS_LOG_LEVEL", "logging.level", |c, v| {
        c.logging.level = v.to_string();
        Ok(())
    }),
    ("CHASSIS_LOG_FORMAT", "logging.format", |c, v| {
        c.logging.format = match v {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => return Err(format!("`{v}` is not json or text")),
        };
        Ok(())
    }),
    ("CHASSIS_LOG_OUTPUT", "logging.output", |c, v| {
        c.logging.output = v.to_string();
        Ok(())
    }),
    (
        "CHASSIS_SLO_TARGET_LATENCY_P95_MS",
        "slo.target_latency_p95_ms",
        |c, v| {
            c.slo.target_latency_p95_ms = num(v)?;
            Ok(())
        },
    ),
    ("VAULT_ADDR", "credentials.vault_addr", |c, v| {
        c.credentials.vault_addr = Some(v.to_string());
        Ok(())
    }),
    ("VAULT_NAMESPACE", "credentials.vault_namespace", |c, v| {
        c.credentials.vault_namespace = Some(v.to_string());
        Ok(())
    }),
    ("VAULT_CACERT", "credentials.vault_cacert", |c, v| {
        c.credentials.vault_cacert = Some(PathBuf::from(v));
        Ok(())
    }),
];

impl Config {
    /// Applies every `CHASSIS_*` (and `VAULT_ADDR`, `VAULT_NAMESPACE`,
    /// `VAULT_CACERT`) variable in `vars`. `VAULT_TOKEN` is read where the
    /// provider is built, so the token never sits in the configuration.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            if let Some((var, key, set)) = ENV_OVERRIDES.iter().find(|(n, _, _)| *n == name) {
                set(self, &value).map_err(|message| ConfigError::Invalid {
                    source_name: format!("environment variable {var}"),
                    key: format!("chassis.{key}"),
                    message,
                })?;
            }
        }
        Ok(())
    }
}
