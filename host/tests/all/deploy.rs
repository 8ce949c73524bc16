//! The operator artefacts in `deploy/` and `docs/operations.md`, held to the
//! real binary: the Prometheus rules pass `promtool`'s unit tests, every
//! metric a rule or dashboard query names is exported by a running
//! `chassis serve`, the dashboard has the panels the guide reads, and the
//! systemd unit is hardened and agrees with the production config.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chassis_tests::programs::*;
use common::assert_success;
use common::served::Served;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// File descriptors one live sandbox may hold: one per filesystem preopen
/// its policy grants and one per guest TCP or HTTP connection (4 + 4 is a
/// generous policy), plus the gRPC connection of a remote run.
const FDS_PER_SANDBOX: u64 = 4 + 4 + 1;
/// Listeners, epoll and eventfd, etcd and Vault connections, audit files,
/// the log file, stdio.
const FDS_FOR_THE_HOST: u64 = 1024;
/// The manual's load target: 10,000 concurrent sandboxes.
const SANDBOXES: u64 = 10_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `command` on PATH, if it is there.
fn on_path(command: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

/// promtool, or a failure saying how to get it: the alert tests must not
/// pass by being skipped.
fn promtool() -> PathBuf {
    on_path("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH, so the alert rules cannot be tested: run `cargo xtask test`, \
             which installs it, or `apt-get install prometheus`"
        )
    })
}

fn run(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

#[track_caller]
fn assert_ran(command: &mut Command) -> String {
    let out = run(command);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// --- PromQL ------------------------------------------------------------------

/// Aggregation operators: followed by `by`/`without` or `(`, never metrics.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Keywords that are followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords and literals.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

/// The metric names a PromQL expression (or a Grafana `label_values(...)`
/// query) reads: every identifier that is not a function call, an
/// aggregation, a keyword, a label name, a string or a duration.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, stepping over strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                '"' | '\'' | '`' => {
                    let quote = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (1e3, 0.95, 5m, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if called {
                    i = skip_group(next, '(', ')');
                }
            } else if called
                || AGGREGATIONS.contains(&lower.as_str())
                || KEYWORDS.contains(&lower.as_str())
            {
                // A function, an aggregation or a keyword.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// A histogram's series name (`_bucket`, `_sum`, `_count`) without its suffix.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[test]
fn promql_metric_names_skip_functions_labels_strings_and_durations() {
    let names = promql_metrics(
        r#"1000 * histogram_quantile(0.95, sum by (job, instance, le) (rate(if_chassis_run_duration_seconds_bucket{instance=~"$instance", outcome!="a{b}"}[$__rate_interval] offset 5m)))
           > on (job, instance) group_left () if_chassis_slo_target_latency_ms and bool up{job="if-chassis"} or chassis:run_latency_p95_ms:rate5m
           unless topk(3, count_values("v", x_total)) / 1e3 + label_values(if_chassis_sandbox_count, instance)"#,
    );
    let expected: BTreeSet<String> = [
        "if_chassis_run_duration_seconds_bucket",
        "if_chassis_slo_target_latency_ms",
        "up",
        "chassis:run_latency_p95_ms:rate5m",
        "x_total",
        "if_chassis_sandbox_count",
        // label_values' second argument is a label name; it cannot be told
        // apart from a metric syntactically, and the checks below reject it
        // as neither chassis's nor `up`, so templating queries name only
        // `instance`, which is special-cased there.
        "instance",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
    assert_eq!(
        base_name("if_chassis_claim_duration_seconds_bucket"),
        "if_chassis_claim_duration_seconds"
    );
    assert_eq!(base_name("if_chassis_runs_total"), "if_chassis_runs_total");
}

// --- The rules and their tests -----------------------------------------------

const RULES: &str = "deploy/prometheus/chassis.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/chassis.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/chassis-dashboard.json";
const UNIT: &str = "deploy/systemd/chassis.service";
const GUIDE: &str = "docs/operations.md";

/// Every rule in the rules file: (alert or record name, rule).
fn rules() -> Vec<(String, Yaml)> {
    let doc: Yaml = serde_yaml_ng::from_str(&read(RULES)).expect("the rules file is YAML");
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("each rule is an alert or a record");
            rules.push((name.to_string(), rule.clone()));
        }
    }
    rules
}

fn alerts() -> Vec<(String, Yaml)> {
    rules()
        .into_iter()
        .filter(|(_, rule)| rule["alert"].is_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    let dir = root().join("deploy/prometheus");
    let checked = assert_ran(
        Command::new(&promtool)
            .args(["check", "rules", "chassis.rules.yml"])
            .current_dir(&dir),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = assert_ran(
        Command::new(&promtool)
            .args(["test", "rules", "chassis.rules.test.yml"])
            .current_dir(&dir),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_test() {
    let tests: Yaml = serde_yaml_ng::from_str(&read(RULE_TESTS)).expect("the rule tests are YAML");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name.clone());
            }
            // A case is quiet for an alert when it expects none, or when
            // one of its hosts (`instance`) is left out of the expected alerts.
            let instances: BTreeSet<&str> = case["input_series"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|s| s["series"].as_str())
                .filter_map(|s| s.split("instance=\"").nth(1)?.split('"').next())
                .collect();
            let alerting: BTreeSet<&str> = check["exp_alerts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a["exp_labels"]["instance"].as_str())
                .collect();
            if expected == 0 || instances.iter().any(|i| !alerting.contains(i)) {
                quiet.insert(name);
            }
        }
    }
    for (name, _) in alerts() {
        assert!(
            firing.contains(&name),
            "no promtool test shows {name} firing"
        );
        assert!(
            quiet.contains(&name),
            "no promtool test shows {name} staying quiet"
        );
    }
}

#[test]
fn every_alert_is_labelled_and_links_to_its_section_of_the_operator_guide() {
    let guide = read(GUIDE);
    let headings: BTreeSet<&str> = guide
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 2, "{alerts:?}");
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity `{severity}`"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name} has no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = name.to_ascii_lowercase();
        assert!(
            url.ends_with(&format!("/{GUIDE}#{anchor}")),
            "{name}: runbook_url {url:?} should point at {GUIDE}#{anchor}"
        );
        assert!(
            headings.contains(name.as_str()),
            "{GUIDE} has no section headed `{name}` (the anchor #{anchor})"
        );
    }
    for (seed, expr) in [
        ("ChassisSandboxEscape", "if_chassis_sandbox_escapes"),
        (
            "ChassisMemoryHigh",
            "if_chassis_memory_usage_mb / if_chassis_memory_limit_mb > 0.8",
        ),
    ] {
        let (_, rule) = alerts
            .iter()
            .find(|(name, _)| name == seed)
            .unwrap_or_else(|| panic!("the seed's alert {seed} is missing"));
        assert!(
            rule["expr"].as_str().unwrap().contains(expr),
            "{seed}: {rule:?}"
        );
    }
}

// --- The dashboard -------------------------------------------------------------

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Each panel's title with its target expressions.
fn panel_queries(dashboard: &Json) -> Vec<(String, Vec<String>)> {
    panels(dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
                .collect();
            (p["title"].as_str().unwrap_or_default().to_string(), exprs)
        })
        .collect()
}

/// Every PromQL the dashboard runs: targets, and query variables.
fn dashboard_promql(dashboard: &Json) -> Vec<String> {
    let mut all: Vec<String> = panel_queries(dashboard)
        .into_iter()
        .flat_map(|(_, exprs)| exprs)
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .expect("a query variable has a query");
            all.push(query.to_string());
        }
    }
    all
}

#[test]
fn dashboard_has_the_panels_the_guide_reads_with_templated_queries() {
    let dashboard = dashboard();
    let datasource = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["name"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panel_error(title, "no id"));
        assert!(ids.insert(id), "panel id {id} is used twice (`{title}`)");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "`{title}` does not use the templated datasource"
        );
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panel_error(title, "no targets"));
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "`{title}` has a target without expr"
            );
            assert!(
                refs.insert(target["refId"].as_str().unwrap_or_default()),
                "`{title}`: refId used twice"
            );
            if !target["datasource"].is_null() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "`{title}`");
            }
        }
    }

    let queries = panel_queries(&dashboard);
    // What the operator guide reads, and the queries that show it.
    let required: [(&str, &[&str]); 7] = [
        ("sandbox count", &["if_chassis_sandbox_count"]),
        (
            "run latency p50/p95/p99 against the SLO",
            &[
                "histogram_quantile(0.50, sum by (le) (rate(if_chassis_run_duration_seconds_bucket",
                "histogram_quantile(0.95, sum by (le) (rate(if_chassis_run_duration_seconds_bucket",
                "histogram_quantile(0.99, sum by (le) (rate(if_chassis_run_duration_seconds_bucket",
                "if_chassis_slo_target_latency_ms",
            ],
        ),
        (
            "fuel per module",
            &["by (module)", "if_chassis_module_fuel_total"],
        ),
        (
            "memory per module",
            &["by (module)", "if_chassis_module_peak_memory_mb"],
        ),
        (
            "denials by kind",
            &["by (kind)", "if_chassis_denials_total"],
        ),
        (
            "claim latency",
            &[
                "histogram_quantile(0.95",
                "if_chassis_claim_duration_seconds_bucket",
            ],
        ),
        ("escapes", &["if_chassis_sandbox_escapes"]),
    ];
    for (what, needles) in required {
        assert!(
            queries.iter().any(|(_, exprs)| {
                let all = exprs.join("\n");
                needles.iter().all(|n| all.contains(n))
            }),
            "no panel shows {what} (queries naming all of {needles:?})"
        );
    }
}

fn panel_error(title: &str, what: &str) -> ! {
    panic!("panel `{title}`: {what}")
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let promtool = promtool();
    // promtool checks PromQL inside rules; give each query a rule, with
    // Grafana's variables replaced by what Grafana would send.
    let rules: Vec<Json> = dashboard_promql(&dashboard())
        .iter()
        .filter(|q| !q.starts_with("label_values("))
        .enumerate()
        .map(|(i, q)| {
            let expr = q
                .replace("$__rate_interval", "1m")
                .replace("$__range", "6h")
                .replace("$instance", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    assert!(rules.len() > 10, "{rules:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.json");
    std::fs::write(
        &file,
        serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .unwrap();
    assert_ran(Command::new(promtool).args(["check", "rules"]).arg(&file));
}

// --- Every named metric is exported ----------------------------------------------

/// Drives the server the way the dashboard and alerts expect to see it used:
/// a module registered and run over gRPC, one whose secret read is denied,
/// and a two-step runbook submitted and followed to the end (so step claims
/// have been timed).
fn exercise(served: &Served) {
    let hello = served.register(HELLO_COMPONENT);
    assert_success(&served.client(&["run", &hello, "--input", "ops"]));
    let thief = served.register(HOSTILE_SECRET_THIEF_COMPONENT);
    let _ = served.client(&["run", &thief, "--input", "root-password"]);
    let guests = Path::new(HELLO_COMPONENT).parent().unwrap();
    let runbook = served.data_dir().join("two-steps.toml");
    std::fs::write(
        &runbook,
        "name = \"two-steps\"\n[steps.a]\nmodule = \"echo.wasm\"\ninput = \"x\"\n\
         [steps.b]\nmodule = \"hasher.wasm\"\ndepends_on = [\"a\"]\ninput = \"{{a}}\"\n",
    )
    .unwrap();
    let submitted = std::process::Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["runbook", "submit", "--watch", "--addr"])
        .arg(format!("http://{}", served.addr))
        .arg("--modules")
        .arg(guests)
        .arg(runbook)
        .output()
        .unwrap();
    assert_success(&submitted);
}

/// Names of the series in a scrape: what a query can select (a histogram
/// only as `_bucket`, `_sum` and `_count`).
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("if_chassis_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// Every metric name in the rules and the dashboard, with where it is used.
fn named_metrics() -> BTreeMap<String, Vec<String>> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, rule) in rules() {
        for metric in promql_metrics(rule["expr"].as_str().expect("expr")) {
            named
                .entry(metric)
                .or_default()
                .push(format!("rule {name}"));
        }
    }
    for query in dashboard_promql(&dashboard()) {
        for metric in promql_metrics(&query) {
            named
                .entry(metric)
                .or_default()
                .push(format!("dashboard `{query}`"));
        }
    }
    named
}

#[test]
fn every_metric_in_the_rules_and_dashboard_is_exported_by_a_running_server() {
    let served = Served::start("  audit:\n    enabled: true\n");
    exercise(&served);
    let scrape = served.scrape_until(|t| {
        t.contains("if_chassis_sandbox_count 0")
            && t.contains("if_chassis_run_duration_seconds_bucket")
    });
    let exported = exported(&scrape);
    let recorded: BTreeSet<String> = rules()
        .into_iter()
        .filter(|(_, r)| r["record"].is_string())
        .map(|(name, _)| name)
        .collect();
    let named = named_metrics();
    assert!(
        named.contains_key("if_chassis_sandbox_escapes"),
        "{named:?}"
    );
    let mut missing = Vec::new();
    for (metric, uses) in &named {
        let ok = if metric.starts_with("if_chassis_") {
            exported.contains(metric.as_str())
        } else {
            // `up` comes from Prometheus; `instance` only as label_values'
            // label; `chassis:*` from the recording rules in the same file.
            metric == "up"
                || (metric == "instance" && uses.iter().all(|u| u.contains("label_values(")))
                || recorded.contains(metric)
        };
        if !ok {
            missing.push(format!("{metric} (used by {})", uses.join(", ")));
        }
    }
    assert!(
        missing.is_empty(),
        "named but not exported by `chassis serve`:\n  {}\n\nscrape:\n{scrape}",
        missing.join("\n  ")
    );
}

#[test]
fn every_chassis_metric_is_graphed_or_alerted_on() {
    let named: BTreeSet<String> = named_metrics()
        .keys()
        .flat_map(|m| [m.clone(), base_name(m).to_string()])
        .collect();
    for metric in chassis::telemetry::ALL_METRICS {
        assert!(
            named.contains(*metric),
            "{metric} is exported but neither a rule nor a dashboard panel uses it"
        );
    }
}

// --- The systemd unit ---------------------------------------------------------------

/// A unit file as section -> key -> values (a key may repeat; an empty
/// assignment resets the list, as systemd does).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut unit: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let entry = std::mem::take(&mut logical);
        if let Some(name) = entry.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = entry
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {entry:?}"));
        let values = unit
            .entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default();
        if value.trim().is_empty() {
            values.clear();
        } else {
            values.push(value.trim().to_string());
        }
    }
    unit
}

/// The production config as the binary reads it.
fn production_config() -> Json {
    let out = assert_ran(
        Command::new(env!("CARGO_BIN_EXE_chassis"))
            .args(["config", "check", "--json"])
            .arg(root().join("deploy/chassis.production.yaml")),
    );
    serde_json::from_str(&out).expect("config check --json prints JSON")
}

#[test]
fn the_shipped_sysctl_holds_the_mappings_of_the_largest_pool_the_config_allows() {
    let text = read("deploy/systemd/chassis.sysctl");
    let settings: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').expect("key = value"))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    assert_eq!(settings.len(), 1, "{settings:?}");
    let (key, value) = settings[0];
    assert_eq!(key, "vm.max_map_count");
    let value: u64 = value.parse().expect("a number");
    // The config refuses a pool past 100,000 slots; that many live needs:
    let largest = 100_000;
    let needed = chassis::engine::maps::needed_for(largest);
    assert!(
        value >= needed,
        "vm.max_map_count = {value}, {largest} slots need {needed}"
    );
    assert_eq!(chassis::engine::maps::pool_warning(largest, value), None);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("chassis.yaml");
    std::fs::write(&config, "chassis:\n  sandbox_pool:\n    max_size: 100001\n").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_chassis"))
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("chassis runs");
    assert!(
        !refused.status.success(),
        "a pool of 100,001 slots was accepted"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("must be from 1 to 100000"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let docs = read("docs/operations.md");
    assert!(
        docs.contains(
            "install -m 0644 deploy/systemd/chassis.sysctl /etc/sysctl.d/90-chassis.conf"
        ) && docs.contains("sysctl --load /etc/sysctl.d/90-chassis.conf"),
        "the operator guide's install steps should install and load the shipped sysctl file"
    );
}

#[test]
fn systemd_unit_is_hardened_and_sized_for_ten_thousand_sandboxes() {
    let unit = parse_unit(&read(UNIT));
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("[Service] {key}= should be set once, is {other:?}"),
        }
    };
    let user = one("User");
    assert!(!["root", "0", ""].contains(&user), "User={user}");
    let sysusers = read("deploy/systemd/chassis.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user])),
        "chassis.sysusers does not create the unit's user {user}"
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(
        service.get("CapabilityBoundingSet"),
        Some(&Vec::new()),
        "CapabilityBoundingSet= should be empty: no capabilities"
    );
    assert_ne!(
        service.get("MemoryDenyWriteExecute").map(Vec::as_slice),
        Some(&["yes".to_string()][..]),
        "wasmtime maps compiled code executable"
    );
    assert!(!service.contains_key("ExecReload"), "chassis has no reload");

    let config = production_config();
    let writable: Vec<&str> = service["ReadWritePaths"]
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches('-'))
        .collect();
    let data_dir = config["data_dir"].as_str().unwrap();
    assert!(
        writable.contains(&data_dir),
        "ReadWritePaths {writable:?} leaves data_dir {data_dir} read-only"
    );
    let log = config["logging"]["output"].as_str().unwrap();
    if log.starts_with('/') {
        let log_dir = Path::new(log).parent().unwrap().to_str().unwrap();
        assert!(
            writable.iter().any(|w| *w == log || *w == log_dir),
            "ReadWritePaths {writable:?} leaves logging.output {log} read-only"
        );
    }

    let nofile: u64 = one("LimitNOFILE").parse().expect("a number");
    let needed = SANDBOXES * FDS_PER_SANDBOX + FDS_FOR_THE_HOST;
    assert!(
        nofile >= needed,
        "LimitNOFILE={nofile}, 10,000 sandboxes need {needed}"
    );

    let grace = config["server"]["shutdown_grace_seconds"].as_u64().unwrap();
    let stop: u64 = one("TimeoutStopSec").parse().expect("seconds");
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} would SIGKILL before shutdown_grace_seconds ({grace}) ends"
    );

    // ExecStart is a command line the binary accepts, on the deploy config.
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert!(
        exec[0].starts_with('/') && exec[0].ends_with("/chassis"),
        "{exec:?}"
    );
    assert_eq!(exec[1], "serve", "{exec:?}");
    let config_at = exec
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    assert_eq!(
        Path::new(exec[config_at + 1]).file_name().unwrap(),
        "chassis.production.yaml",
        "ExecStart should serve deploy/chassis.production.yaml as installed"
    );
    let help = assert_ran(Command::new(env!("CARGO_BIN_EXE_chassis")).args(["serve", "--help"]));
    for flag in exec.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "`chassis serve` has no {flag}:\n{help}"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    // verify checks that ExecStart exists: point it at the binary under test.
    let text = read(UNIT).replace("/usr/local/bin/chassis", env!("CARGO_BIN_EXE_chassis"));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("chassis.service");
    std::fs::write(&unit, text).unwrap();
    let out = run(Command::new(analyze).arg("verify").arg(&unit));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, warning on stderr.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("chassis.service"))
        .collect();
    assert!(
        out.status.success() && warnings.is_empty(),
        "systemd-analyze verify ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_the_paths_the_unit_writes() {
    let tools = (on_path("systemd-sysusers"), on_path("systemd-tmpfiles"));
    let (Some(sysusers), Some(tmpfiles)) = tools else {
        eprintln!("skipped: systemd-sysusers or systemd-tmpfiles is not installed");
        return;
    };
    let root_user = run(Command::new("id").arg("-u")).stdout == b"0\n";
    if !root_user {
        eprintln!("skipped: systemd-tmpfiles must run as root to chown");
        return;
    }
    let image = tempfile::tempdir().unwrap();
    std::fs::create_dir(image.path().join("etc")).unwrap();
    assert_ran(
        Command::new(sysusers)
            .arg(format!("--root={}", image.path().display()))
            .arg(root().join("deploy/systemd/chassis.sysusers")),
    );
    let passwd = std::fs::read_to_string(image.path().join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("chassis:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no chassis user in {passwd}"));
    let out = run(Command::new(tmpfiles)
        .arg(format!("--root={}", image.path().display()))
        .arg("--create")
        .arg(root().join("deploy/systemd/chassis.tmpfiles")));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-tmpfiles ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let config = production_config();
    use std::os::unix::fs::MetadataExt;
    for path in [
        config["data_dir"].as_str().unwrap(),
        config["logging"]["output"].as_str().unwrap(),
    ] {
        let meta = std::fs::metadata(image.path().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path} was not created: {e}"));
        assert_eq!(meta.uid(), uid, "{path} is not owned by chassis");
        assert_eq!(meta.mode() & 0o007, 0, "{path} is open to others");
    }
}

// --- The operator guide -----------------------------------------------------------------

#[test]
fn operator_guide_covers_deployment_keys_backup_and_is_linked() {
    let guide = read(GUIDE);
    for topic in [
        "etcdctl snapshot save",
        "etcdctl snapshot restore",
        "chassis audit rotate-key",
        "chassis audit verify",
        "chassis config check",
        "client_ca_file",
        "vault_token_path",
        "task_claim_ttl_seconds",
        "keys/artifact.key",
        "systemd-analyze verify",
        "promtool test rules",
        "## Reading the dashboard",
    ] {
        assert!(guide.contains(topic), "{GUIDE} does not cover `{topic}`");
    }
    // Every dashboard panel is explained, by title.
    for (title, _) in panel_queries(&dashboard()) {
        assert!(
            guide.contains(&title),
            "{GUIDE} does not explain the panel `{title}`"
        );
    }
    for doc in ["README.md", "docs/architecture.md"] {
        assert!(
            read(doc).contains("operations.md"),
            "{doc} does not link the operator guide"
        );
    }
}
