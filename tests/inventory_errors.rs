//! Every inventory validation error has a fixture under tests/fixtures/invalid/ and the
//! exact message it must produce: file, line, column, field and cause, exit code 1.

use assert_cmd::Command;

/// (fixture, expected `line:col: field: message` after the file name)
const CASES: &[(&str, &str)] = &[
    ("unknown-key", "10:5: hosts.web-02.adress: unknown field `adress`, expected one of `address`"),
    ("invalid-address", "10:14: hosts.web-02.address: invalid IP address \"10.0.0.300\""),
    ("wrong-type-roles", "5:12: hosts.lb-01.roles: invalid type: string \"lb\", expected a sequence"),
    ("wrong-type-port", "3:9: ssh.port: invalid type: string \"twenty-two\", expected u16"),
    ("duplicate-host", "9:3: hosts.web-01: duplicate host name (first defined at line 6)"),
    ("duplicate-address", "10:14: hosts.web-02.address: duplicate address 10.0.0.11 (already used by web-01)"),
    ("no-lb", "3:8: hosts: no host has the role lb"),
    ("no-web", "3:8: hosts: no host has the role web"),
    ("no-primary", "3:8: hosts: no host has the role db-primary (exactly one is required)"),
    ("two-primaries", "11:12: hosts.web-02.roles: more than one db-primary (web-01, web-02)"),
    ("replica-without-primary", "11:12: hosts.web-02.roles: db-replica without a db-primary"),
    ("unknown-role", "11:18: hosts.web-02.roles[1]: unknown variant `db-replicaa`"),
    ("malformed-secret-env", "13:27: secrets.db_app_password.env: malformed secret reference: \"not a variable\" is not an environment variable name"),
    ("malformed-secret-both", "13:20: secrets.db_app_password: malformed secret reference: give exactly one of"),
    ("malformed-secret-kind", "13:22: secrets.db_app_password.vault: unknown field `vault`, expected `env` or `file`"),
    ("missing-secret", "13:18: secrets: secret db_replication_password is required"),
    ("yaml-syntax", "6:1: did not find expected ',' or ']'"),
    ("firewall-bad-network", "13:25: firewall.admin[1]: invalid network \"10.0.0.0/33\" (want ADDRESS/PREFIX"),
    ("monitor-missing-secret", "13:18: secrets: secret db_monitor_password is required by the monitor role"),
    ("rollout-canary-all", "13:11: rollout.canary: 1 canary server(s) of 1 web server(s): at least one must stay on the old release"),
    ("rollout-bad-rate", "16:19: rollout.max_error_rate: a percentage from 0% to 100%, e.g. 1% or 0.5%"),
    ("rollout-p95", "16:15: rollout.max_p95_ms: a whole number of milliseconds from 1 to 600000, e.g. 300"),
    ("rollout-p95-zero", "16:15: rollout.max_p95_ms: a whole number of milliseconds from 1 to 600000, e.g. 300"),
];

#[test]
fn every_invalid_fixture_fails_with_its_message() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut listed: Vec<String> = CASES.iter().map(|(f, _)| format!("{f}.yaml")).collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    present.sort();
    assert_eq!(
        listed, present,
        "every fixture has a case and every case a fixture"
    );

    for (fixture, expected) in CASES {
        let path = format!("tests/fixtures/invalid/{fixture}.yaml");
        for command in ["check", "render"] {
            let mut cmd = Command::cargo_bin("foobar-infra").unwrap();
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .arg(command)
                .arg(&path);
            if command == "render" {
                cmd.arg("--out")
                    .arg(std::env::temp_dir().join("foobar-never-written"));
            }
            let out = cmd.env("NO_COLOR", "1").output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {fixture}: {stderr}");
            let want = format!("error: {path}:{expected}");
            assert!(
                stderr.contains(&want),
                "{command} {fixture}:\n  want: {want}\n  got:  {stderr}"
            );
            assert!(out.stdout.is_empty(), "nothing on stdout for {fixture}");
        }
    }
}

/// `mysql.flavor: mysql8` cannot be tested end to end (MySQL 8 is not in Debian's
/// archive): the commands that lead to apply refuse it, naming file, line, column and
/// field, before connecting to any host; `render` still writes its files.
#[test]
fn a_flavor_no_lab_can_test_is_refused_but_still_rendered() {
    let path = "examples/large/inventory-mysql8.yaml";
    let run = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("foobar-infra").unwrap();
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let want = format!(
        "error: {path}:62:11: mysql.flavor: mysql8 is refused by check, diff, plan and apply: \
         MySQL 8 is not in Debian's archive"
    );
    let plan_out = std::env::temp_dir().join("foobar-mysql8-never-written.plan");
    let plan_out = plan_out.to_str().unwrap();
    for args in [
        vec!["check", path],
        vec!["check", "--json", path],
        vec!["diff", path],
        vec!["plan", path, "--out", plan_out],
        vec!["apply", path],
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&want),
            "{args:?}:\n  want: {want}\n  got:  {stderr}"
        );
        if args.contains(&"--json") {
            // The one JSON document is the error, of kind inventory (src/error.rs).
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["error"]["kind"], "inventory", "{doc}");
            assert!(doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mysql8 is refused"));
        } else {
            assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        }
    }
    assert!(!std::path::Path::new(plan_out).exists());

    let dir = tempfile::tempdir().unwrap();
    let out = run(&["render", path, "--out", dir.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cnf = dir
        .path()
        .join("db-01/etc/mysql/mysql.conf.d/60-foobar.cnf");
    assert!(
        cnf.is_file(),
        "render wrote the mysql8 config: {}",
        cnf.display()
    );
}
