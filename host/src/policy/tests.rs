use std::path::Path;

use proptest::prelude::*;

use super::*;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, Path::new("p.toml"))
}

#[track_caller]
fn error_at(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(PolicyError::Invalid {
            line,
            column,
            message,
            ..
        }) => (line, column, message),
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

#[test]
fn the_shipped_example_policies_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 3);
}

#[test]
fn an_empty_policy_grants_nothing() {
    let p = parse("name = \"nothing\"").unwrap();
    assert!(
        p.preopens.is_empty() && p.network.is_empty() && p.env.is_empty() && p.secrets.is_empty()
    );
    assert!(p.allows_caller(LOCAL_CALLER));
    assert!(!p.allows_caller("someone"));
    assert_eq!(p.sha256.len(), 64);
}

#[test]
fn a_typo_d_key_is_an_error_naming_line_and_column() {
    let (line, column, message) = error_at("name = \"x\"\n\n[limits]\nfuell = 10\n");
    assert_eq!((line, column), (4, 1));
    assert!(message.contains("unknown field `fuell`"), "{message}");
    assert!(
        message.contains("memory_mb"),
        "lists the expected keys: {message}"
    );
}

#[test]
fn errors_render_as_file_line_column() {
    let err =
        parse("name = \"x\"\n[[filesystem]]\nhost = \"relative\"\nguest = \"/g\"\nmode = \"ro\"\n")
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.toml:3:8: `host` must be an absolute path"
    );
}

#[test]
fn bad_values_are_errors_at_the_value() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("name = \"Bad Name\"", (1, 8), "`name` must be"),
        (
            "name = \"x\"\n[limits]\nmemory_mb = 0",
            (3, 13),
            "greater than zero",
        ),
        (
            "name = \"x\"\n[limits]\ncpu_percent = 150",
            (3, 15),
            "at most 100",
        ),
        (
            "name = \"x\"\n[limits]\ntimeout = \"soon\"",
            (3, 11),
            "`timeout`",
        ),
        (
            "name = \"x\"\n[network]\nallow = [\"example.com\"]",
            (3, 10),
            "no port",
        ),
        (
            "name = \"x\"\n[network]\nallow = [\"*.example.com:443\"]",
            (3, 10),
            "wildcards",
        ),
        ("name = \"x\"\nmodules = [\"abc\"]", (2, 12), "sha256"),
        (
            "name = \"x\"\ncallers = [\"*\"]",
            (2, 12),
            "name each caller",
        ),
        (
            "name = \"x\"\n[env]\n\"1BAD\" = \"v\"",
            (3, 1),
            "not a valid environment variable",
        ),
        (
            "name = \"x\"\n[[filesystem]]\nhost = \"/a\"\nguest = \"/g\"\nmode = \"rwx\"",
            (5, 8),
            "unknown variant",
        ),
        (
            "name = \"x\"\n[[filesystem]]\nhost = \"/a/../etc\"\nguest = \"/g\"\nmode = \"ro\"",
            (3, 8),
            "`..`",
        ),
        (
            "name = \"x\"\n[secrets.db]\npath = \"secret/db\"",
            (3, 8),
            "needs a `key`",
        ),
    ];
    for (text, at, needle) in cases {
        let (line, column, message) = error_at(text);
        assert_eq!((line, column), *at, "{text}: {message}");
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn contradictions_are_errors() {
    let twice = "name = \"x\"\n[[filesystem]]\nhost = \"/a\"\nguest = \"/g\"\nmode = \"ro\"\n\
                 [[filesystem]]\nhost = \"/a\"\nguest = \"/h\"\nmode = \"rw\"\n";
    let (line, _, message) = error_at(twice);
    assert_eq!(line, 9);
    assert!(message.contains("cannot be both"), "{message}");

    let same_guest = "name = \"x\"\n[[filesystem]]\nhost = \"/a\"\nguest = \"/g\"\nmode = \"ro\"\n\
                      [[filesystem]]\nhost = \"/b\"\nguest = \"/g\"\nmode = \"ro\"\n";
    assert!(error_at(same_guest).2.contains("mapped twice"));

    // The sandbox-escape shape: a root inside the policy's own rw root.
    let nested = "name = \"x\"\n[[filesystem]]\nhost = \"/tmp/x\"\nguest = \"/work\"\nmode = \"rw\"\n\
                  [[filesystem]]\nhost = \"/tmp/x/in\"\nguest = \"/in\"\nmode = \"ro\"\n";
    let (line, _, message) = error_at(nested);
    assert_eq!(line, 7);
    assert!(
        message.contains("`/tmp/x/in` (ro) lies inside `/tmp/x` (rw)"),
        "{message}"
    );
    let containing = "name = \"x\"\n[[filesystem]]\nhost = \"/srv/a/out\"\nguest = \"/o\"\nmode = \"rw\"\n\
                      [[filesystem]]\nhost = \"/srv\"\nguest = \"/all\"\nmode = \"ro\"\n";
    assert!(
        error_at(containing)
            .2
            .contains("`/srv` (ro) contains `/srv/a/out` (rw)")
    );
    // Read-only roots may nest: nothing can be replaced through them.
    parse(
        "name = \"x\"\n[[filesystem]]\nhost = \"/srv\"\nguest = \"/a\"\nmode = \"ro\"\n\
           [[filesystem]]\nhost = \"/srv/sub\"\nguest = \"/b\"\nmode = \"ro\"\n",
    )
    .unwrap();

    let env_clash = "name = \"x\"\n[env]\nTOKEN = \"a\"\n[secrets.t]\npath = \"secret/t\"\nkey = \"k\"\nenv = \"TOKEN\"\n";
    let (line, _, message) = error_at(env_clash);
    assert_eq!(line, 7);
    assert!(message.contains("two sources"), "{message}");

    let dynamic_key = "name = \"x\"\n[secrets.db]\npath = \"database/creds/ro\"\ndynamic = true\nkey = \"password\"\n";
    assert!(
        error_at(dynamic_key)
            .2
            .contains("dynamic secret has no `key`")
    );

    let dup_host = "name = \"x\"\n[network]\nallow = [\"a.com:443\", \"A.com:443\"]\n";
    assert!(error_at(dup_host).2.contains("listed twice"));
}

#[test]
fn limits_become_a_tightening_request() {
    let p =
        parse("name = \"x\"\n[limits]\nmemory_mb = 64\ntimeout = \"1m 30s\"\ncpu_percent = 25\n")
            .unwrap();
    let req = p.limits_request();
    assert_eq!(req.memory_bytes, Some(64 << 20));
    assert_eq!(req.timeout, Some(std::time::Duration::from_secs(90)));
    assert_eq!(req.cpu_percent, Some(25));
}

#[test]
fn module_pins_restrict_which_modules_may_run() {
    let id = "a".repeat(64);
    let p = parse(&format!("name = \"x\"\nmodules = [\"sha256:{id}\"]")).unwrap();
    assert!(p.allows_module(&id));
    assert!(!p.allows_module(&"b".repeat(64)));
}

#[test]
fn explain_speaks_plainly_about_every_capability() {
    let p = Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/reporter.toml"))
        .unwrap();
    let text = explain(&p);
    for needle in [
        "can read, but not change, everything under /var/lib/infrafabric/reports",
        "it sees the directory as /reports",
        "none: it cannot open any connection",
        "TZ=UTC",
        "none: every secret it asks for is denied",
        "memory: 128 MiB",
        "CPU: 50% of one core",
        "coordinator.prod.infrafabric.io",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn diff_flags_widening_as_high_risk_and_narrowing_as_low() {
    let old = parse("name = \"x\"\n[[filesystem]]\nhost = \"/a\"\nguest = \"/a\"\nmode = \"ro\"\n[limits]\nmemory_mb = 64\n").unwrap();
    let new = parse(
        "name = \"x\"\n[[filesystem]]\nhost = \"/a\"\nguest = \"/a\"\nmode = \"rw\"\n[limits]\nmemory_mb = 32\n\
         [network]\nallow = [\"api.example.com:443\"]\n[secrets.t]\npath = \"secret/t\"\nkey = \"k\"\n",
    )
    .unwrap();
    let changes = diff(&old, &new);
    let find = |area: &str| {
        changes
            .iter()
            .find(|c| c.area == area)
            .unwrap_or_else(|| panic!("{area}: {changes:?}"))
    };
    assert_eq!(find("filesystem").risk, Risk::High);
    assert_eq!(find("filesystem").kind, ChangeKind::Changed);
    assert_eq!(find("network").risk, Risk::High);
    assert_eq!(find("secrets").risk, Risk::High);
    assert_eq!(find("limits").risk, Risk::Low);
    assert_eq!(changes.first().unwrap().risk, Risk::High, "riskiest first");
    let back = diff(&new, &old);
    assert!(
        back.iter()
            .filter(|c| c.area != "limits")
            .all(|c| c.risk == Risk::Low),
        "{back:?}"
    );
    assert!(diff(&old, &old).is_empty());
}

#[test]
fn dropping_every_module_pin_is_high_risk() {
    let id = "c".repeat(64);
    let pinned = parse(&format!("name = \"x\"\nmodules = [\"{id}\"]")).unwrap();
    let open = parse("name = \"x\"").unwrap();
    let changes = diff(&pinned, &open);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].risk, Risk::High);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_parser(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    #[test]
    fn policy_shaped_text_never_panics_the_parser(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("name = \"p\"".to_string()),
                Just("[limits]".to_string()),
                Just("[network]".to_string()),
                Just("[[filesystem]]".to_string()),
                Just("[env]".to_string()),
                Just("[secrets.s]".to_string()),
                "[a-z_]{1,12} = (\"[^\"\\n]{0,20}\"|[0-9]{1,25}|true|\\[\"[^\"\\n]{0,20}\"\\])",
                "(host|guest) = \"/?[a-z./]{0,12}\"",
                "mode = \"(ro|rw|xx)\"",
                "allow = \\[\"[a-z0-9.:\\[\\]*]{0,20}\"\\]",
                "(memory_mb|fuel|cpu_percent|output_kb) = -?[0-9]{1,22}",
                "timeout = \"[0-9a-z ]{0,8}\"",
                "(path|key|env) = \"[A-Za-z0-9/_.]{0,12}\"",
            ],
            0..14,
        )
    ) {
        let text = lines.join("\n");
        if let Err(PolicyError::Invalid { line, column, .. }) = parse(&text) {
            prop_assert!(line >= 1 && column >= 1);
            prop_assert!(line <= text.lines().count().max(1) + 1);
        }
    }
}

#[test]
fn concurrent_runs_is_a_positive_bounded_count_named_at_its_line() {
    let p = parse("name = \"x\"\n[limits]\nconcurrent_runs = 8\n").unwrap();
    assert_eq!(p.limits.concurrent_runs, Some(8));
    let (line, _, message) = error_at("name = \"x\"\n[limits]\nconcurrent_runs = 0\n");
    assert_eq!(line, 3);
    assert!(
        message.contains("`concurrent_runs` must be greater than zero"),
        "{message}"
    );
    let (_, _, message) = error_at("name = \"x\"\n[limits]\nconcurrent_runs = 100001\n");
    assert!(
        message.contains("`concurrent_runs` must be at most 100000"),
        "{message}"
    );
}
