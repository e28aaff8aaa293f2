//! The findings of the outside security review (issue 20) that need no lab, one test
//! each, named after the finding, driving the real binary: each failed on the code the
//! review read and passes now. SECURITY.md says how each finding is prevented.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;

fn cli() -> Command {
    let mut c = Command::cargo_bin("foobar-infra").unwrap();
    c.env("NO_COLOR", "1");
    c
}

/// The production-shaped inventory without its application folder (a relative path).
fn base() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/inventory.yaml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("source:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `base()` with one line replaced, written as inventory.yaml into a new folder.
fn inventory_with(line: &str, replacement: &str) -> (tempfile::TempDir, PathBuf) {
    let text = base();
    assert!(text.contains(line), "the inventory has no line {line:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, text.replacen(line, replacement, 1)).unwrap();
    (dir, path)
}

/// Runs `check` and `render` on an inventory: both must refuse it with exit 1, writing
/// nothing; returns check's stderr.
fn refused(path: &Path) -> String {
    let out_dir = path.parent().unwrap().join("out");
    for args in [
        vec!["check"],
        vec!["render", "--out", out_dir.to_str().unwrap()],
    ] {
        let out = cli().args(&args).arg(path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    }
    assert!(
        !out_dir.exists(),
        "render wrote files for a refused inventory"
    );
    let out = cli().arg("check").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn finding_1_health_check_path_cannot_inject_config() {
    for hostile in [
        "/health#x this-is-not-a-keyword garbage",
        "/health}",
        "/health;",
        "/$request_uri",
        "/%[src]",
        "/h\\u001b[31m",
        "/h\\u202e",
        "/h\\\"x",
        "/h\\\\x",
    ] {
        let (_dir, path) = inventory_with("    path: /health", &format!("    path: \"{hostile}\""));
        let err = refused(&path);
        let line = line_of(&path, "    path: ");
        let want = format!(":{line}:11: haproxy.health_check.path: invalid health check path");
        assert!(err.contains(&want), "{hostile}: {err}");
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{202e}'),
            "{err:?}"
        );
    }
}

#[test]
fn finding_2_secret_placeholder_text_in_any_inventory_value_is_refused() {
    for (line, replacement, field) in [
        (
            "    path: /health",
            "    path: \"/health{{secret:db_app_password}}\"",
            "haproxy.health_check.path",
        ),
        (
            "  user: root",
            "  user: \"{{secret:db_app_password}}\"",
            "ssh.user",
        ),
        (
            "  connect_timeout: 10",
            "  known_hosts: \"k{{secret:db_replication_password}}\"",
            "ssh.known_hosts",
        ),
    ] {
        let (_dir, path) = inventory_with(line, replacement);
        let err = refused(&path);
        let at = line_of(&path, "{{secret:");
        assert!(
            err.contains(&format!(":{at}:"))
                && err.contains(&format!("{field}: secret placeholder text")),
            "{field}: {err}"
        );
    }
}

/// The binary's wall time for `check` of a file (process start included).
fn timed_check(path: &Path) -> (Duration, String, Option<i32>) {
    let start = Instant::now();
    let out = cli().arg("check").arg(path).output().unwrap();
    let took = start.elapsed();
    (
        took,
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code(),
    )
}

/// Any job of the example workflow that a pull request can run gets no secret, no
/// runner of our own (one that reaches the hosts) and runs no command that talks to
/// hosts; the jobs that do are limited to pushes to the protected branch.
#[test]
fn finding_3_pull_request_jobs_get_no_secrets_and_no_hosts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci/foobar-infra.yml");
    let workflow: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let jobs = workflow["jobs"].as_mapping().unwrap();
    let mut protected = 0;
    for (name, job) in jobs {
        let text = serde_yaml::to_string(job).unwrap();
        let condition = job["if"].as_str().unwrap_or("");
        if condition.contains("github.event_name == 'push'")
            && condition.contains("github.ref == 'refs/heads/main'")
        {
            protected += 1;
            continue;
        }
        assert!(!text.contains("secrets."), "{name:?} gets secrets:\n{text}");
        assert!(
            !text.contains("self-hosted"),
            "{name:?} runs on our runners"
        );
        for command in [
            "plan", "apply", "diff", "status", "db", "history", "rollback",
        ] {
            let call = format!("foobar-infra {command} ");
            assert!(!text.contains(&call), "{name:?} runs `{call}`");
        }
    }
    assert!(protected >= 2, "plan and apply run on the protected branch");
    let on = &workflow["on"]["push"]["branches"];
    assert_eq!(on.as_sequence().map(|b| b.len()), Some(1), "{on:?}");
}

#[test]
fn finding_8_deeply_nested_or_huge_yaml_is_refused_in_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let flow = format!(
        "domain: example.com\nhosts: {}{}\n",
        "[".repeat(80_000),
        "]".repeat(80_000)
    );
    let block = format!("domain: example.com\nhosts:\n  {}x\n", "- ".repeat(80_000));
    let top = format!("{}x\n", "[".repeat(5_000_000));
    let huge = "a: b\n".repeat(2_000_000);
    let unit = format!("{}1{}", "[".repeat(30), "]".repeat(30));
    let many = format!(
        "domain: example.com\nhosts: [{}]\n",
        vec![unit; 16_000].join(",")
    );
    for (name, text, place) in [
        (
            "flow.yaml",
            flow,
            "flow.yaml:2:39: nested more than 32 levels deep",
        ),
        ("block.yaml", block, "block.yaml:3:"),
        ("top.yaml", top, "top.yaml:1:"),
        ("huge.yaml", huge, "huge.yaml:209716:"),
        // Under both limits, but 1 MiB of one-character items cost seconds to parse.
        (
            "many.yaml",
            many,
            "many.yaml:2:40001: more than 20000 entries",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (took, err, code) = timed_check(&path);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(place), "{name}: {err}");
        // Milliseconds of work; the bound leaves room for a loaded machine.
        assert!(took < Duration::from_millis(1500), "{name}: {took:?}");
    }
}

#[test]
fn finding_9_an_inline_secret_is_not_echoed() {
    let (_dir, path) = inventory_with(
        "  db_app_password:\n    env: FOOBAR_DB_APP_PASSWORD\n",
        "  db_app_password: \"S3cr3t-P@ss\"\n",
    );
    let err = refused(&path);
    let line = line_of(&path, "S3cr3t");
    assert!(
        err.contains(&format!(
            ":{line}:20: secrets.db_app_password: expected a reference"
        )),
        "{err}"
    );
    assert!(
        err.contains("{env: NAME}") && err.contains("{file: PATH}"),
        "{err}"
    );
    assert!(!err.contains("S3cr3t") && !err.contains("Raw"), "{err}");
    for inline in ["12345678", "[S3cr3t]", "true"] {
        let (_dir, path) = inventory_with(
            "  db_app_password:\n    env: FOOBAR_DB_APP_PASSWORD\n",
            &format!("  db_app_password: {inline}\n"),
        );
        let err = refused(&path);
        assert!(
            !err.contains(inline.trim_matches(['[', ']'])) && err.contains("{env: NAME}"),
            "{err}"
        );
    }
    // The whole section written as a value is not echoed either.
    let text = base();
    let cut = text.find("secrets:").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, format!("{}secrets: \"S3cr3t-P@ss\"\n", &text[..cut])).unwrap();
    let err = refused(&path);
    assert!(!err.contains("S3cr3t"), "{err}");
}

#[test]
fn finding_11_the_firewall_filters_input_only() {
    let dir = tempfile::tempdir().unwrap();
    let large = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/large/inventory.yaml");
    let out = cli()
        .arg("render")
        .arg(&large)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut rulesets = 0;
    for host in std::fs::read_dir(dir.path()).unwrap() {
        let path = host.unwrap().path().join("etc/foobar/firewall.nft");
        let Ok(rules) = std::fs::read_to_string(&path) else {
            continue;
        };
        rulesets += 1;
        let hooks: Vec<&str> = rules.lines().filter(|l| l.contains(" hook ")).collect();
        assert_eq!(hooks.len(), 1, "{}: {hooks:?}", path.display());
        assert!(
            hooks[0].contains("hook input"),
            "{}: {hooks:?}",
            path.display()
        );
        assert!(!rules.contains("hook forward"), "{}", path.display());
    }
    assert!(rulesets >= 8, "{rulesets} rulesets");
}

#[test]
fn finding_13_usage_errors_exit_64_never_2() {
    for args in [
        vec!["diff", "--typo"],
        vec!["diff"],
        vec![],
        vec!["apply", "x.yaml", "--parallel", "many"],
        vec!["nonsense"],
    ] {
        let out = cli().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
    }
    for args in [vec!["--help"], vec!["--version"], vec!["help", "diff"]] {
        assert_eq!(cli().args(&args).output().unwrap().status.code(), Some(0));
    }
    let help = cli().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("64 usage error"));
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    assert!(readme.unwrap().contains("| 64 | usage error"));
}

#[test]
fn finding_15_a_template_in_a_subfolder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(templates.join("lb")).unwrap();
    std::fs::write(templates.join("lb/haproxy.cfg"), "global\n").unwrap();
    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/inventory.yaml");
    let out = cli()
        .args(["render", "--out"])
        .arg(dir.path().join("out"))
        .arg("--templates")
        .arg(&templates)
        .arg(&inventory)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lb: a folder"), "{err}");
}

#[test]
fn finding_15_an_unclosed_if_is_reported_where_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let src = "global\n    maxconn 10\n{% if lb.tls %}\n    ssl\n\ndefaults\n    mode http\n";
    std::fs::write(dir.path().join("haproxy.cfg"), src).unwrap();
    let out = cli()
        .arg("check")
        .arg("--templates")
        .arg(dir.path())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/inventory.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("haproxy.cfg:3: `{% if lb.tls %}` is never closed"),
        "{err}"
    );
}

#[test]
fn finding_15_the_man_page_and_db_help_describe_what_exists() {
    let man = cli().arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        !page.contains("foobar\\-infra\\-render(1)") && !page.contains("(1)"),
        "{page}"
    );
    assert!(page.contains("foobar\\-infra db promote"), "{page}");
    let db = cli().args(["db", "--help"]).output().unwrap();
    let db = String::from_utf8_lossy(&db.stdout);
    assert!(db.contains("backup, restore, promote"), "{db}");
    let promote = cli().args(["db", "promote", "--help"]).output().unwrap();
    let promote = String::from_utf8_lossy(&promote.stdout);
    for option in [
        "--limit",
        "--parallel",
        "--persist",
        "--max-plan-age",
        "--prune-host",
    ] {
        assert!(
            !promote.contains(option),
            "db promote --help offers {option}:\n{promote}"
        );
    }
    for option in ["--dry-run", "--write-inventory", "--templates"] {
        assert!(promote.contains(option), "{promote}");
    }
}

/// `base()` with its hosts on loopback and SSH on port 1 (refused at once: nothing is
/// reached if a command gets as far as connecting), secrets from the environment.
fn loopback_inventory() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    let text = base()
        .replace("address: 10.0.0.", "address: 127.0.0.")
        .replacen("  port: 22\n", "  port: 1\n", 1);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn with_secrets(mut c: Command) -> Command {
    c.env("FOOBAR_DB_APP_PASSWORD", "a")
        .env("FOOBAR_DB_REPLICATION_PASSWORD", "b");
    c
}

/// Finding 4: a hand-made plan naming another inventory (with that inventory's hash) was
/// applied with that inventory. A plan is now read only if it matches its own checksum,
/// and its inventory is never the one it names.
#[test]
fn finding_4_a_hand_made_plan_naming_an_inventory_is_refused() {
    let (elsewhere, inventory) = loopback_inventory();
    let text = std::fs::read_to_string(&inventory).unwrap();
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let plans = tempfile::tempdir().unwrap();
    let plan = plans.path().join("plan.json");
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        &plan,
        serde_json::json!({
            "schema": 1, "kind": "foobar-infra-plan", "created": created, "tool_version": "0.1.0",
            "inventory": inventory, "inventory_hash": hash, "hosts": [],
        })
        .to_string(),
    )
    .unwrap();
    for args in [vec!["apply"], vec!["diff"]] {
        let out = with_secrets(cli()).args(&args).arg(&plan).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("checksum"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Connecting"), "{args:?}: {stderr}");
    }
    drop(elsewhere);
}

/// Finding 5: `--prune-host NAME` without an address took it from any host's history.
/// Now only from this controller's own records (or the command line), shown, and for
/// apply confirmed (a prompt on a terminal, else --yes): checked before anything
/// connects.
#[test]
fn finding_5_prune_host_takes_its_address_only_from_the_controller() {
    let (dir, inventory) = loopback_inventory();
    let state = dir.path().join("state");
    let apply = |extra: &[&str]| {
        let out = with_secrets(cli())
            .env("XDG_STATE_HOME", &state)
            .arg("apply")
            .arg(&inventory)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // No record of web-03 on this controller: refused before any connection.
    let (code, stderr) = apply(&["--prune-host", "web-03"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("this controller has no record") && stderr.contains("web-03=ADDRESS"),
        "{stderr}"
    );
    assert!(!stderr.contains("Connecting"), "{stderr}");

    // The controller's record (as its applies write it): shown; with no terminal and
    // no --yes, refused before any connection.
    let books = state.join("foobar-infra/hosts");
    let mut book = foobar_infra::address_book::AddressBook::load(&books, &inventory).unwrap();
    book.hosts.insert(
        "web-03".into(),
        foobar_infra::address_book::Recorded {
            address: "127.0.0.13".parse().unwrap(),
            applied: 1_796_300_000,
        },
    );
    book.save(&books).unwrap();
    let (code, stderr) = apply(&["--prune-host", "web-03"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.13")
            && stderr.contains("--yes")
            && stderr.contains("web-03=127.0.0.13"),
        "{stderr}"
    );
    assert!(!stderr.contains("Connecting"), "{stderr}");
    // Confirmed (--yes), or given: it goes on (to connecting, refused on port 1).
    for extra in [
        &["--prune-host", "web-03", "--yes"][..],
        &["--prune-host", "web-03=127.0.0.13"][..],
    ] {
        let (code, stderr) = apply(extra);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(!stderr.contains("--yes"), "{extra:?}: {stderr}");
        assert!(stderr.contains("cannot connect"), "{extra:?}: {stderr}");
    }
}
