//! The command line itself: help with exit codes, version, completions that bash
//! accepts, the man page.

use assert_cmd::Command;

fn cli() -> Command {
    let mut c = Command::cargo_bin("foobar-infra").unwrap();
    c.env("NO_COLOR", "1");
    c
}

#[test]
fn help_documents_exit_codes_and_commands() {
    let out = cli().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "0  success",
        "1  error",
        "2  changes pending",
        "render",
        "check",
        "diff",
        "apply",
        "status",
        "rollback",
        "history",
        "completions",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = cli().args(["help", "apply"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("--dry-run"),
        "{text}"
    );
}

#[test]
fn version_is_the_crate_version() {
    let out = cli().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("foobar-infra {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bash_accepts_the_completion_script() {
    let out = cli().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("foobar-infra"));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("foobar-infra.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A local port nothing listens on (bound, noted, closed), and a directory for ERRFILE.
fn refused_port() -> (u16, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (port, tempfile::tempdir().unwrap())
}

/// `ssh-connect` is ssh's ProxyCommand for the binary's own connections: it works when
/// called, and no help, completion script or man page offers it.
#[test]
fn the_internal_ssh_connect_entry_is_nowhere_in_the_interface() {
    for args in [
        &["--help"][..],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["completions", "fish"],
        &["man"],
    ] {
        let out = cli().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("ssh-connect"), "{args:?} offers ssh-connect");
    }
    // A refused port: exit 1, the reason in ERRFILE (where the master looks for it).
    let (port, dir) = refused_port();
    let errfile = dir.path().join("err");
    let out = cli()
        .args(["ssh-connect", "127.0.0.1", &port.to_string(), "5"])
        .arg(&errfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let why = std::fs::read_to_string(&errfile).unwrap();
    assert!(why.contains("refused"), "{why}");
    // Wrong arguments: the usage line, exit 1.
    let out = cli().args(["ssh-connect", "127.0.0.1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: foobar-infra ssh-connect"));
}

/// Started by ssh as its `$SHELL` (FOOBAR_INFRA_USER_SHELL set): the binary runs its
/// own ProxyCommand line itself and hands anything else to the user's shell, with SHELL
/// restored.
#[test]
fn as_sshs_shell_it_runs_its_connector_and_hands_the_rest_to_the_users_shell() {
    let script = r#"printf '%s|%s\n' "${SHELL-unset}" "${FOOBAR_INFRA_USER_SHELL-unset}""#;
    for (user_shell, expect) in [("/bin/sh", "/bin/sh|unset"), ("", "unset|unset")] {
        let out = cli()
            .env("FOOBAR_INFRA_USER_SHELL", user_shell)
            .env("SHELL", "/somewhere/foobar-infra")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expect);
    }
    // Its own line runs here: a user shell that does not exist is never started.
    let exe = std::fs::canonicalize(assert_cmd::cargo::cargo_bin("foobar-infra")).unwrap();
    let (port, dir) = refused_port();
    let errfile = dir.path().join("err");
    let line = format!(
        "exec {} ssh-connect 127.0.0.1 {port} 5 {}",
        exe.display(),
        errfile.display()
    );
    let out = cli()
        .env("FOOBAR_INFRA_USER_SHELL", "/nonexistent/sh")
        .args(["-c", &line])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(std::fs::read_to_string(&errfile)
        .unwrap()
        .contains("refused"));
    // Anything else goes to that shell: here it cannot start, which is said.
    let out = cli()
        .env("FOOBAR_INFRA_USER_SHELL", "/nonexistent/sh")
        .args(["-c", "exec true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("running /nonexistent/sh"));
}

#[test]
fn the_man_page_is_roff() {
    let out = cli().arg("man").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("foobar\\-infra") || text.contains("foobar-infra"));
}

#[test]
fn an_unknown_limit_is_an_error_naming_it() {
    let out = cli()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["diff", "inventory/inventory.yaml", "--limit", "web-99"])
        .env("FOOBAR_DB_APP_PASSWORD", "x")
        .env("FOOBAR_DB_REPLICATION_PASSWORD", "y")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--limit web-99: no host or role of that name"));
}

#[test]
fn a_missing_secret_names_the_secret_and_where_it_was_looked_for() {
    let out = cli()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["diff", "inventory/inventory.yaml"])
        .env_remove("FOOBAR_DB_APP_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "secret db_app_password: environment variable FOOBAR_DB_APP_PASSWORD is not set"
        ),
        "{err}"
    );
}

/// The first JSON document on stdout.
fn json_doc(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Issue 21: with --json, a failure is `{"error": {"kind", "host", "message"}}` on stdout,
/// its kind mapped to the exit code in one place (src/error.rs).
#[test]
fn json_errors_carry_their_kind_host_and_exit_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = cli();
        c.current_dir(root)
            .args(args)
            .env_remove("FOOBAR_DB_APP_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (out.status.code(), json_doc(&out)["error"].clone())
    };
    let secrets = [
        ("FOOBAR_DB_APP_PASSWORD", "x"),
        ("FOOBAR_DB_REPLICATION_PASSWORD", "y"),
    ];

    let (code, e) = run(
        &[
            "diff",
            "--json",
            "tests/fixtures/invalid/invalid-address.yaml",
        ],
        &[],
    );
    assert_eq!(
        (code, e["kind"].as_str()),
        (Some(1), Some("inventory")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("invalid-address.yaml:"),
        "{e}"
    );

    let (code, e) = run(&["diff", "--json", "inventory/inventory.yaml"], &[]);
    assert_eq!((code, e["kind"].as_str()), (Some(1), Some("secret")), "{e}");

    let (code, e) = run(
        &[
            "diff",
            "--json",
            "inventory/inventory.yaml",
            "--inventory",
            "inventory/inventory.yaml",
        ],
        &secrets,
    );
    assert_eq!((code, e["kind"].as_str()), (Some(64), Some("usage")), "{e}");

    // Hosts on loopback addresses, at a port nothing listens on.
    let (port, dir) = refused_port();
    let text = std::fs::read_to_string(format!("{root}/inventory/inventory.yaml"))
        .unwrap()
        .replace("port: 22", &format!("port: {port}"))
        .replace("address: 10.0.0.10", "address: 127.0.0.1")
        .replace("address: 10.0.0.11", "address: 127.0.0.2")
        .replace("address: 10.0.0.12", "address: 127.0.0.3")
        .replace(
            "source: ../examples/app",
            &format!("source: {root}/examples/app"),
        );
    let inv = dir.path().join("loopback.yaml");
    std::fs::write(&inv, text).unwrap();
    let (code, e) = run(&["diff", "--json", inv.to_str().unwrap()], &secrets);
    assert_eq!(
        (code, e["kind"].as_str()),
        (Some(1), Some("connect")),
        "{e}"
    );
    // Three hosts failed: no one host is named; each has its line.
    assert!(e["host"].is_null(), "{e}");
    for h in ["lb-01", "web-01", "web-02"] {
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{h}: cannot connect")),
            "{e}"
        );
    }
    let one = dir.path().join("one.yaml");
    let only_lb = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&one, only_lb).unwrap();
    let (code, e) = run(
        &["diff", "--json", one.to_str().unwrap(), "--limit", "lb-01"],
        &secrets,
    );
    assert_eq!(
        (code, e["kind"].as_str(), e["host"].as_str()),
        (Some(1), Some("connect"), Some("lb-01")),
        "{e}"
    );
}
