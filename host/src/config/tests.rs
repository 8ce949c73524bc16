use std::path::Path;

use super::*;

/// An IF.chassis deployment's `chassis:` block as it is written in the
/// field, byte for byte, plus a `sandbox_pool`.
const SEED: &str = "chassis:
  # WASM runtime
  runtime:
    engine: wasmtime  # or wasmer
    max_memory_mb: 512
    max_cpu_percent: 50
    max_execution_time_seconds: 300

  # Scoped credentials
  credentials:
    vault_addr: https://vault.prod.infrafabric.io:8200
    vault_token_path: /etc/infrafabric/vault-token

  # SLO tracking
  slo:
    target_latency_p95_ms: 10
    target_availability_percent: 99.9

  # Metrics
  metrics:
    enabled: true
    port: 9092

  logging:
    level: INFO
    format: json
    output: /var/log/infrafabric/chassis.log
";

#[test]
fn the_seed_config_loads_unchanged_with_every_key_read() {
    let c = Config::parse(SEED, Path::new("seed.yaml")).unwrap();
    c.validate("seed.yaml").unwrap();
    assert_eq!(c.runtime.max_memory_mb, 512);
    assert_eq!(c.runtime.max_cpu_percent, 50);
    assert_eq!(c.runtime.max_execution_time_seconds, 300);
    assert_eq!(
        c.credentials.vault_addr.as_deref(),
        Some("https://vault.prod.infrafabric.io:8200")
    );
    assert_eq!(
        c.credentials.vault_token_path,
        Some("/etc/infrafabric/vault-token".into())
    );
    assert_eq!(c.slo.target_latency_p95_ms, 10);
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.port, 9092);
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.output, "/var/log/infrafabric/chassis.log");
    let caps = c.host_caps();
    assert_eq!(caps.max_cpu_percent, 50);
    assert_eq!(caps.max_memory_bytes, 512 << 20);
}

#[test]
fn the_shipped_production_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/chassis.production.yaml");
    let c = Config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    c.validate("deploy").unwrap();
    assert_eq!(c.sandbox_pool.max_size, 100);
    assert!(c.server.tls.as_ref().unwrap().require_client_cert);
}

#[test]
fn an_unknown_key_is_an_error_with_its_line() {
    let err = Config::parse(
        "chassis:\n  runtime:\n    max_memry_mb: 5\n",
        Path::new("c.yaml"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("c.yaml:3:5: "), "{text}");
    assert!(text.contains("unknown field `max_memry_mb`"), "{text}");
}

#[test]
fn a_wrong_type_is_an_error_with_its_line() {
    let err = Config::parse(
        "chassis:\n  metrics:\n    port: lots\n",
        Path::new("c.yaml"),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("c.yaml:3:11: "), "{err}");
}

#[test]
fn rules_between_keys_name_the_key() {
    let check = |yaml: &str| {
        Config::parse(yaml, Path::new("c.yaml"))
            .unwrap()
            .validate("c.yaml")
            .unwrap_err()
            .to_string()
    };
    assert!(
        check("chassis:\n  runtime:\n    engine: wasmer\n")
            .contains("`chassis.runtime.engine`: chassis embeds wasmtime only")
    );
    assert!(
        check("chassis:\n  sandbox_pool:\n    min_size: 20\n    max_size: 10\n")
            .contains("20 is above max_size (10)")
    );
    assert!(
        check("chassis:\n  server:\n    listen: 0.0.0.0:50051\n")
            .contains("`server.tls` (cert_file, key_file) is required")
    );
    assert!(check("chassis:\n  server:\n    listen: 0.0.0.0:50051\n    tls:\n      cert_file: /c\n      key_file: /k\n").contains("client_ca_file"));
    assert!(check("chassis:\n  logging:\n    level: LOUD\n").contains("is not one of"));
    assert!(
        check("chassis:\n  sandbox_pool:\n    max_size: 10\n    per_caller_max_size: 11\n")
            .contains("`chassis.sandbox_pool.per_caller_max_size`: 11 is above max_size (10)")
    );
    assert!(
        check("chassis:\n  runtime:\n    max_concurrent_compiles: 5000\n")
            .contains("`chassis.runtime.max_concurrent_compiles`: must be from 0")
    );
    assert!(
        check("chassis:\n  runtime:\n    compile_queue_timeout_ms: 0\n")
            .contains("`chassis.runtime.compile_queue_timeout_ms`: must be greater than zero")
    );
    assert!(
        check("chassis:\n  runtime:\n    max_memory_mb: 32\n  sandbox_pool:\n    keep_resident_kib: 40000\n")
            .contains("`chassis.sandbox_pool.keep_resident_kib`: must be at most runtime.max_memory_mb (32 MiB = 32768 KiB)")
    );
    assert!(
        check("chassis:\n  runtime:\n    metering: epoch\n    max_fuel: 1000\n").contains(
            "`chassis.runtime.max_fuel`: is 1000, but runtime.metering = \"epoch\" meters no fuel"
        )
    );
}

#[test]
fn metering_is_fuel_unless_epoch_is_asked_for_and_reaches_the_caps() {
    let fuel = Config::parse("chassis:\n  runtime: {}\n", Path::new("c.yaml")).unwrap();
    assert_eq!(fuel.host_caps().metering, crate::limits::Metering::Fuel);
    let epoch = Config::parse(
        "chassis:\n  runtime:\n    metering: epoch\n",
        Path::new("c.yaml"),
    )
    .unwrap();
    epoch.validate("c.yaml").unwrap();
    assert_eq!(epoch.host_caps().metering, crate::limits::Metering::Epoch);
    assert_eq!(epoch.host_caps().default_limits().fuel, None);
    let err = Config::parse(
        "chassis:\n  runtime:\n    metering: instructions\n",
        Path::new("c.yaml"),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("c.yaml:3:15: "), "{err}");
}

#[test]
fn environment_variables_override_the_file() {
    let mut c = Config::parse(SEED, Path::new("seed.yaml")).unwrap();
    c.apply_env([
        ("CHASSIS_POOL_MAX_SIZE".to_string(), "7".to_string()),
        ("CHASSIS_LISTEN".to_string(), "127.0.0.1:6000".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ])
    .unwrap();
    assert_eq!(c.sandbox_pool.max_size, 7);
    assert_eq!(c.server.listen.port(), 6000);
    let err = c
        .apply_env([("CHASSIS_METRICS_PORT".to_string(), "99999".to_string())])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("environment variable CHASSIS_METRICS_PORT"),
        "{err}"
    );
}

#[test]
fn no_config_means_loopback_plaintext() {
    let c = Config::default();
    c.validate("defaults").unwrap();
    assert!(c.server.listen.ip().is_loopback());
    assert!(c.server.tls.is_none());
}

#[test]
fn credentials_take_namespace_cacert_approle_timeout_and_env_overrides() {
    let text = "chassis:\n  credentials:\n    vault_addr: https://vault:8200\n    vault_namespace: team\n    \
                vault_cacert: /etc/ca.pem\n    timeout_seconds: 3\n    approle:\n      role_id: r1\n      \
                secret_id_path: /etc/secret-id\n";
    let mut c = Config::parse(text, Path::new("c.yaml")).unwrap();
    c.validate("c.yaml").unwrap();
    assert_eq!(c.credentials.timeout_seconds, 3);
    let role = c.credentials.approle.clone().unwrap();
    assert_eq!(role.mount, "approle");
    assert_eq!(role.secret_id_path, PathBuf::from("/etc/secret-id"));
    c.apply_env([("VAULT_NAMESPACE".to_string(), "other".to_string())])
        .unwrap();
    assert_eq!(c.credentials.vault_namespace.as_deref(), Some("other"));
}

#[test]
fn vault_keys_without_an_address_are_errors_naming_the_key() {
    let text =
        "chassis:\n  credentials:\n    approle:\n      role_id: r1\n      secret_id_path: /x\n";
    let c = Config::parse(text, Path::new("c.yaml")).unwrap();
    let e = c.validate("c.yaml").unwrap_err().to_string();
    assert!(e.contains("chassis.credentials.approle"), "{e}");
    let text = "chassis:\n  credentials:\n    vault_addr: http://v:8200\n    vault_token_path: /t\n    local_file: /s.toml\n";
    let c = Config::parse(text, Path::new("c.yaml")).unwrap();
    let e = c.validate("c.yaml").unwrap_err().to_string();
    assert!(e.contains("credentials.local_file"), "{e}");
}

#[test]
fn admins_default_to_local_and_refuse_anonymous_and_wildcards() {
    let c = Config::parse(
        "chassis:\n  server:\n    admins: [ops.example]\n",
        Path::new("c.yaml"),
    )
    .unwrap();
    c.validate("c.yaml").unwrap();
    assert_eq!(c.server.admins, vec!["ops.example".to_string()]);
    assert_eq!(Config::default().server.admins, vec!["local".to_string()]);
    for bad in ["anonymous", "ANONYMOUS", "\"*\"", "\"\""] {
        let text = format!("chassis:\n  server:\n    admins: [{bad}]\n");
        let c = Config::parse(&text, Path::new("c.yaml")).unwrap();
        let e = c.validate("c.yaml").unwrap_err().to_string();
        assert!(e.contains("chassis.server.admins"), "{bad}: {e}");
    }
}

#[test]
fn audit_retention_defaults_to_90_days_and_its_archive_must_leave_the_log_dir() {
    let c = Config::parse("chassis:\n  data_dir: /d\n", Path::new("c.yaml")).unwrap();
    let o = crate::server::audit_options(&c).unwrap();
    assert_eq!(o.retain, Some(std::time::Duration::from_secs(90 * 86_400)));
    assert_eq!(o.archive_dir, None);
    let text =
        "chassis:\n  data_dir: /d\n  audit:\n    retain_days: 0\n    archive_dir: /archive\n";
    let c = Config::parse(text, Path::new("c.yaml")).unwrap();
    c.validate("c.yaml").unwrap();
    let o = crate::server::audit_options(&c).unwrap();
    assert_eq!(o.retain, None, "0 keeps every file");
    assert_eq!(o.archive_dir.as_deref(), Some(Path::new("/archive")));
    let text = "chassis:\n  data_dir: /d\n  audit:\n    archive_dir: /d/audit\n";
    let err = Config::parse(text, Path::new("c.yaml"))
        .unwrap()
        .validate("c.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`chassis.audit.archive_dir`: is the audit log's own directory"),
        "{err}"
    );
    let err = Config::parse(
        "chassis:\n  audit:\n    retain_days: ninety\n",
        Path::new("c.yaml"),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("c.yaml:3:"), "{err}");
}
