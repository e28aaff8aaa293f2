//! End-to-end tests of `apply` and `diff` against the real lab (issue 4): three Debian
//! containers with sshd, nginx, haproxy and MariaDB, reached over SSH like real hosts.
//! Run by `cargo test --test lab`; they need Docker (see tests/lab/main.rs).

use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use crate::overrides;

lab_tests!(
    fresh_lab_apply_then_round_robin_over_both_web_servers,
    second_apply_is_a_no_op_with_one_connection_and_one_command_per_host,
    the_agents_cached_copy_is_root_only_and_never_runs_tampered,
    a_changed_variable_shows_in_diff_and_is_served_after_apply,
    drift_on_a_host_is_reported_and_repaired,
    an_invalid_nginx_override_changes_nothing_anywhere,
    a_host_that_is_down_fails_the_run_before_anything_changes,
    an_unknown_host_key_fails_closed,
    a_stopped_nginx_is_taken_out_by_the_health_check,
    a_lock_held_by_another_run_stops_apply_naming_the_holder,
    a_non_root_user_works_through_sudo,
    limit_touches_only_the_selected_hosts,
    with_persist_the_next_run_makes_no_remote_command_and_still_sees_drift,
    a_proxy_command_in_the_users_ssh_config_wins_over_the_tcp_connector,
    a_web_server_in_sync_is_vouched_for_without_the_agent_and_drift_still_shows,
    a_missing_secret_fails_the_run_and_leaves_no_connection_behind,
    finding_4_apply_plan_takes_its_inventory_from_the_command_line_and_refuses_an_edited_plan,
    finding_5_prune_host_never_takes_an_address_from_a_hosts_history,
    finding_6_the_kept_agents_socket_is_root_only_or_asks_for_the_tools_token,
    finding_7_text_from_a_host_reaches_the_terminal_escaped,
    finding_12_a_lock_dies_with_its_holder_and_a_live_one_is_never_taken,
);

/// The first apply on the fresh lab, made once by the fixture.
static FIRST_APPLY: OnceLock<Output> = OnceLock::new();

fn setup() {
    lab();
    FIRST_APPLY.get_or_init(|| cli(&["apply", lab_inventory().to_str().unwrap()]));
}

/// Brings the lab back to the inventory's state (web servers running, files in place).
fn baseline() {
    for h in ["web-01", "web-02"] {
        exec_raw(h, &["service", "nginx", "start"]);
    }
    let out = cli(&["apply", lab_inventory().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "baseline apply: {}", text(&out));
}

fn inv() -> String {
    lab_inventory().display().to_string()
}

/// Ten requests on new connections; returns who answered each.
fn ten_requests(path: &str) -> Vec<String> {
    (0..10)
        .map(|i| {
            let r = http_get(lb(), path)
                .unwrap_or_else(|e| panic!("request {i} to the load balancer: {e}"));
            assert_eq!(
                r.status, 200,
                "request {i}: status {} body {}",
                r.status, r.body
            );
            r.header("X-Served-By").unwrap_or("?").to_string()
        })
        .collect()
}

fn fresh_lab_apply_then_round_robin_over_both_web_servers() {
    setup();
    let first = FIRST_APPLY.get().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "first apply on a fresh lab: {}",
        text(first)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("lb-01"),
        "summary table names the hosts: {stdout}"
    );
    // Issue 18: no idle wait for a web server that cannot be healthy yet (its release
    // and database come later in the run), so no "DOWN after 30 s" and no warning.
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        !stderr.contains("after 30 s") && !stderr.to_lowercase().contains("warning"),
        "a healthy first apply warns about nothing: {}",
        text(first)
    );

    // HAProxy may still be counting the new servers up (rise 2).
    assert!(wait_until(Duration::from_secs(15), || {
        (0..4).all(|_| {
            http_get(lb(), "/health")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
    }));
    let served = ten_requests("/health");
    let web1 = served.iter().filter(|s| *s == "web-01").count();
    let web2 = served.iter().filter(|s| *s == "web-02").count();
    assert_eq!((web1, web2), (5, 5), "round robin: {served:?}");
    for pair in served.windows(2) {
        assert_ne!(pair[0], pair[1], "alternating: {served:?}");
    }
}

fn second_apply_is_a_no_op_with_one_connection_and_one_command_per_host() {
    setup();
    baseline();
    let pids = [
        pidfile("web-01", "/run/nginx.pid"),
        pidfile("web-02", "/run/nginx.pid"),
        pidfile("lb-01", "/run/haproxy.pid"),
    ];
    let mtimes: Vec<String> = MANAGED.iter().map(|(h, p)| mtime(h, p)).collect();
    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));

    let out = cli(&["apply", "-v", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for host in ["lb-01", "web-01", "web-02"] {
        let connects = stderr
            .lines()
            .filter(|l| l.contains("Connecting") && l.contains(&format!("{host} (")))
            .count();
        assert_eq!(connects, 1, "{host}: one connection\n{stderr}");
        let commands = stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("Remote") && l.contains(&format!(" {host} #")))
            .count();
        assert_eq!(commands, 1, "{host}: {commands} remote commands\n{stderr}");
    }
    // sshd's own log agrees: it cannot lie.
    std::thread::sleep(Duration::from_millis(300));
    for host in ["lb-01", "web-01", "web-02"] {
        let n = sshd_sessions_since(host, &since);
        assert_eq!(n, 1, "{host}: sshd logged {n} command sessions");
    }
    assert_eq!(
        pids,
        [
            pidfile("web-01", "/run/nginx.pid"),
            pidfile("web-02", "/run/nginx.pid"),
            pidfile("lb-01", "/run/haproxy.pid"),
        ],
        "no reload or restart"
    );
    let after: Vec<String> = MANAGED.iter().map(|(h, p)| mtime(h, p)).collect();
    assert_eq!(mtimes, after, "no file rewritten");

    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));
    let json = cli(&["diff", "--json", &inv()]);
    let doc: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("diff --json is one JSON document");
    assert_eq!(doc["in_sync"], true);
    assert_eq!(doc["schema"], 1);
}

/// The agent runs from the bytes the tool sends; only its compiled code is cached on the
/// host (one file per version, written once) in a root-only directory: a module file put
/// there never runs, a damaged code file is written again, and a directory others could
/// write is neither read nor written.
fn the_agents_cached_copy_is_root_only_and_never_runs_tampered() {
    setup();
    baseline();
    const DIR: &str = "/var/lib/foobar-infra/agent";
    let in_sync = || {
        let out = cli(&["diff", &inv()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    assert_eq!(
        exec("web-01", &["stat", "-c", "%a %U", DIR]).trim(),
        "700 root"
    );
    let listing = exec(
        "web-01",
        &["sh", "-c", &format!("ls -d {DIR}/foobar_agent_*/")],
    );
    let copies: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(
        copies.len(),
        1,
        "one agent version (a package) on a fresh lab: {listing}"
    );
    let files = exec("web-01", &["ls", "-A", copies[0]]);
    let code: Vec<&str> = files.split_whitespace().collect();
    assert!(
        code.len() == 1 && code[0].starts_with("code.cpython-") && code[0].ends_with(".bin"),
        "only the compiled code is kept: {files}"
    );
    let code = format!("{}{}", copies[0], code[0]);
    assert_eq!(
        exec("web-01", &["stat", "-c", "%a %U", &code]).trim(),
        "600 root"
    );
    let written = remote_sha("web-01", &code);

    // A module file put beside it never runs; the code file is not written again.
    let planted = format!("{}core.py", copies[0]);
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            &format!("echo 'raise SystemExit(99)' > {planted}"),
        ],
    );
    in_sync();
    assert_eq!(
        remote_sha("web-01", &code),
        written,
        "written once per version"
    );
    exec("web-01", &["rm", &planted]);
    // A damaged code file is written again from what the tool sent.
    exec("web-01", &["sh", "-c", &format!("echo damaged > {code}")]);
    in_sync();
    // (Not byte for byte: a frozenset constant's order follows the string hash seed.)
    let size = || {
        exec("web-01", &["stat", "-c", "%s", &code])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(size() > 10_000, "the code file is written again");

    // A directory others can write: the modules compile from memory, nothing is written.
    exec("web-01", &["rm", &code]);
    exec("web-01", &["chmod", "777", DIR]);
    in_sync();
    assert_eq!(
        exec_raw("web-01", &["test", "-e", &code]).status.code(),
        Some(1)
    );
    exec("web-01", &["chmod", "700", DIR]);
    in_sync();
    assert!(
        size() > 10_000,
        "written again once the directory is root-only"
    );
}

fn a_changed_variable_shows_in_diff_and_is_served_after_apply() {
    setup();
    baseline();
    let variant = lab_variant("health-path", |t| {
        format!("{t}haproxy:\n  health_check:\n    path: /healthz\n")
    });
    let v = variant.to_str().unwrap();
    assert_ne!(
        http_get(lb(), "/healthz").map(|r| r.status).unwrap_or(0),
        200
    );

    let diff = cli(&["diff", v]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout);
    let changed: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        [
            "-    http-check send meth GET uri /health ver HTTP/1.1 hdr Host www.foobar.com",
            "+    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host www.foobar.com",
            "-    location = /health {",
            "+    location = /healthz {",
            "-    location = /health {",
            "+    location = /healthz {",
        ],
        "exactly the change:\n{stdout}"
    );
    assert!(
        stdout.contains("haproxy reload") && stdout.contains("nginx reload"),
        "{stdout}"
    );
    let dry = cli(&["apply", "--dry-run", v]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));

    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));
    let apply = cli(&["apply", "-v", v]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    // One agent per host serves observe, stage and commit: one remote command each.
    let stderr = String::from_utf8_lossy(&apply.stderr);
    std::thread::sleep(Duration::from_millis(300));
    for host in ["lb-01", "web-01", "web-02"] {
        let ops: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix(&format!("Agent {host} ")))
            .collect();
        assert_eq!(ops, ["observe", "stage", "commit"], "{host}\n{stderr}");
        assert_eq!(sshd_sessions_since(host, &since), 1, "{host}\n{stderr}");
    }
    assert!(wait_until(Duration::from_secs(15), || {
        http_get(lb(), "/healthz")
            .map(|r| r.status == 200 && r.body.starts_with("ok web-0"))
            .unwrap_or(false)
    }));
    assert_eq!(cli(&["diff", v]).status.code(), Some(0));
    baseline();
}

fn drift_on_a_host_is_reported_and_repaired() {
    setup();
    baseline();
    exec(
        "web-02",
        &[
            "sh",
            "-c",
            "echo '# edited by hand' >> /etc/nginx/nginx.conf",
        ],
    );
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout);
    assert!(stdout.contains("== web-02"), "{stdout}");
    assert!(stdout.contains("-# edited by hand"), "{stdout}");
    assert!(
        !stdout.contains("== web-01"),
        "only web-02 drifted: {stdout}"
    );

    let apply = cli(&["apply", &inv()]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    let content = exec("web-02", &["cat", "/etc/nginx/nginx.conf"]);
    assert!(!content.contains("edited by hand"));
    assert_eq!(cli(&["diff", &inv()]).status.code(), Some(0));
}

fn an_invalid_nginx_override_changes_nothing_anywhere() {
    setup();
    baseline();
    let before = managed_hashes();
    let dir = overrides::broken_nginx_site();
    // Something valid changes too (haproxy), so a half-apply would show.
    overrides::override_template(
        &dir,
        "haproxy.cfg",
        "frontend stats",
        "# extra line\nfrontend stats",
    );

    let out = cli(&["apply", &inv(), "--templates", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web-01"), "{stderr}");
    assert!(
        stderr.contains("invalid value \"sixteen\" in \"keepalive\" directive in /etc/nginx/sites-foobar/www.foobar.com.conf:4"),
        "nginx's own message with the real path: {stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(before, managed_hashes(), "no live file changed");
    for (h, p) in MANAGED {
        let leftovers = exec(
            h,
            &[
                "sh",
                "-c",
                &format!("ls -a $(dirname {p}) | grep -c foobar-new || true"),
            ],
        );
        assert_eq!(leftovers.trim(), "0", "{h}: staged files left beside {p}");
    }
    let r = http_get(lb(), "/health").expect("site still serves");
    assert_eq!(r.status, 200);
}

fn a_host_that_is_down_fails_the_run_before_anything_changes() {
    setup();
    baseline();
    let before = managed_hashes();
    let variant = lab_variant("bigger-body", |t| {
        format!("{t}nginx:\n  client_max_body_size: 20m\n")
    });
    let v = variant.to_str().unwrap().to_string();

    let stopped = docker(&["stop", "-t", "20", &container("web-02")]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    let out = cli(&["apply", &v]);
    let started = docker(&["start", &container("web-02")]);
    assert!(started.status.success());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr("web-02: cannot connect to root@10.231.1.12:22")),
        "{stderr}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || exec_raw(
            "web-02",
            &["test", "-S", "/run/mysqld/mysqld.sock"]
        )
        .status
        .success()),
        "web-02 back up"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            cli(&["diff", &inv()]).status.code() == Some(0)
        }),
        "web-02 answers ssh again"
    );
    assert_eq!(before, managed_hashes(), "nothing applied anywhere");
}

fn an_unknown_host_key_fails_closed() {
    setup();
    let bad = state_dir().join("known_hosts.bad");
    let good = std::fs::read_to_string(state_dir().join("known_hosts")).unwrap();
    // web-01's line replaced by lb-01's key: a mismatch, as after a man-in-the-middle.
    let lb_key = good
        .lines()
        .find(|l| l.starts_with(lb()))
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_string();
    let edited: Vec<String> = good
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{} ", web1())) {
                format!("{} {lb_key}", web1())
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&bad, edited.join("\n") + "\n").unwrap();
    let variant = lab_variant("bad-known-hosts", |t| {
        t.replace(".state/known_hosts", ".state/known_hosts.bad")
    });
    let before = managed_hashes();
    let out = cli(&["apply", variant.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web-01: cannot connect"), "{stderr}");
    assert!(stderr.contains("host key verification failed"), "{stderr}");
    assert!(!stderr.contains("web-02: cannot connect"), "{stderr}");
    assert_eq!(before, managed_hashes());
}

fn a_stopped_nginx_is_taken_out_by_the_health_check() {
    setup();
    baseline();
    exec("web-01", &["service", "nginx", "stop"]);
    // Every request succeeds, even before the check marks web-01 down (retries + redispatch).
    let mut served = Vec::new();
    for i in 0..20 {
        let r = http_get(lb(), "/health").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        served.push(r.header("X-Served-By").unwrap_or("?").to_string());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served.iter().all(|s| s == "web-02"), "{served:?}");
    let stats = exec(
        "lb-01",
        &[
            "sh",
            "-c",
            "echo 'show servers state web' | socat stdio /run/haproxy/admin.sock",
        ],
    );
    assert!(stats.contains("web-01"), "{stats}");
    // diff sees the stopped service; apply starts it again.
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(String::from_utf8_lossy(&diff.stdout).contains("nginx start (not running)"));
    baseline();
    assert!(wait_until(Duration::from_secs(15), || {
        let s = ten_requests("/health");
        s.contains(&"web-01".to_string())
    }));
}

fn a_lock_held_by_another_run_stops_apply_naming_the_holder() {
    setup();
    baseline();
    let before = managed_hashes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lock = format!(
        r#"{{"owner": "alice@laptop", "pid": 4242, "started": {now}, "tool_version": "0.1.0", "run_id": "other-run", "host": "web-01"}}"#
    );
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /var/lib/foobar-infra && echo '{lock}' > /var/lib/foobar-infra/lock.json"
            ),
        ],
    );
    // The lock is live while a process holds its flock (as the holder's agent would).
    let holder = hold_lock_flock("web-01");
    let variant = lab_variant("locked", |t| {
        format!("{t}nginx:\n  client_max_body_size: 12m\n")
    });
    let out = cli(&["apply", "--lock-timeout", "1", variant.to_str().unwrap()]);
    exec("web-01", &["kill", &holder]);
    exec("web-01", &["rm", "-f", "/var/lib/foobar-infra/lock.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web-01"), "{stderr}");
    assert!(
        stderr.contains("alice@laptop") && stderr.contains("4242") && stderr.contains("other-run"),
        "{stderr}"
    );
    assert_eq!(before, managed_hashes(), "nothing changed on any host");
}

fn a_non_root_user_works_through_sudo() {
    setup();
    baseline();
    let variant = lab_variant("deploy-user", |t| {
        t.replace("  user: root", "  user: deploy")
    });
    let v = variant.to_str().unwrap();
    let out = cli(&["apply", "-v", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr("deploy@10.231.1.11:22")), "{stderr}");
    assert!(
        stderr.contains(": sudo -n python3"),
        "commands go through sudo -n: {stderr}"
    );
    // A change applied as deploy lands owned by root.
    exec(
        "web-02",
        &["sh", "-c", "echo '# drift' >> /etc/nginx/nginx.conf"],
    );
    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        exec(
            "web-02",
            &["stat", "-c", "%U:%G %a", "/etc/nginx/nginx.conf"]
        )
        .trim(),
        "root:root 644"
    );
    assert_eq!(cli(&["diff", &inv()]).status.code(), Some(0));
}

fn limit_touches_only_the_selected_hosts() {
    setup();
    baseline();
    for h in ["web-01", "web-02"] {
        exec(h, &["sh", "-c", "echo '# drift' >> /etc/nginx/nginx.conf"]);
    }
    let out = cli(&["apply", "--limit", "web-02", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        exec("web-01", &["cat", "/etc/nginx/nginx.conf"]).contains("# drift"),
        "web-01 untouched"
    );
    assert!(
        !exec("web-02", &["cat", "/etc/nginx/nginx.conf"]).contains("# drift"),
        "web-02 repaired"
    );
    let diff = cli(&["diff", "--limit", "lb", &inv()]);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "the lb role is in sync: {}",
        text(&diff)
    );
    baseline();
}

/// `--persist`: the next run reuses the kept master AND the kept agent (a daemon on the
/// host, reached through a socket the master forwards): no new SSH connection and no
/// remote command at all, and drift on a host still shows and is repaired.
fn with_persist_the_next_run_makes_no_remote_command_and_still_sees_drift() {
    setup();
    baseline();
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_foobar-infra"))
            .args(args)
            .current_dir(root())
            .env("NO_COLOR", "1")
            .env("XDG_CACHE_HOME", cache.path())
            .output()
            .expect("running foobar-infra")
    };
    let inv = inv();
    let first = run(&["apply", "--persist", "30", &inv]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    // The kept masters carry their connections through the TCP connector
    // (src/remote/connector.rs): one per host, alive as long as its master.
    for addr in [lb(), web1(), web2()] {
        assert!(
            !processes_matching(&format!("foobar-infra ssh-connect {addr} 22 ")).is_empty(),
            "no connector process for {addr}"
        );
    }

    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));
    let again = run(&["apply", "-v", "--persist", "30", &inv]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    std::thread::sleep(Duration::from_millis(300));
    for host in ["lb-01", "web-01", "web-02"] {
        assert!(
            stderr.contains(&format!("Reusing {host} (kept connection)"))
                && stderr.contains(&format!("Reusing {host} (kept agent)")),
            "{host}\n{stderr}"
        );
        assert_eq!(sshd_sessions_since(host, &since), 0, "{host}\n{stderr}");
        let socket = exec(
            host,
            &[
                "sh",
                "-c",
                "stat -c '%a %U' /run/foobar-infra/root /run/foobar-infra/root/agent-*.0.sock",
            ],
        );
        assert_eq!(socket.trim(), "700 root\n600 root", "{host}");
    }

    let (host, path) = MANAGED[0];
    exec(host, &["sh", "-c", &format!("echo '# drift' >> {path}")]);
    let drift = run(&["diff", "--persist", "30", &inv]);
    assert_eq!(drift.status.code(), Some(2), "{}", text(&drift));
    assert!(
        String::from_utf8_lossy(&drift.stdout).contains("# drift"),
        "{}",
        text(&drift)
    );
    let repair = run(&["apply", "--persist", "30", &inv]);
    assert_eq!(repair.status.code(), Some(0), "{}", text(&repair));
    assert_eq!(
        run(&["diff", "--persist", "30", &inv]).status.code(),
        Some(0)
    );

    end_kept_agents(cache.path());
}

/// The command lines of this machine's processes that contain `needle` (args joined by
/// spaces).
fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}

/// ssh connects through the TCP connector under the user's own ssh config: a ProxyCommand
/// set there wins (ssh keeps the first value it reads), and `ssh.connector: ssh` lets ssh
/// open the connection itself. Either way host keys are still checked (the lab's
/// known_hosts) and the run works.
fn a_proxy_command_in_the_users_ssh_config_wins_over_the_tcp_connector() {
    setup();
    baseline();
    let state = state_dir();
    let marker = state.join("user-proxy.log");
    let _ = std::fs::remove_file(&marker);
    std::fs::write(
        state.join("user-proxy.ssh_config"),
        format!(
            "Host *\n    ProxyCommand sh -c 'echo %h >> {}; exec {} ssh-connect %h %p 10 /dev/null'\n",
            marker.display(),
            env!("CARGO_BIN_EXE_foobar-infra")
        ),
    )
    .unwrap();
    // `diff` with one more line in the inventory's `ssh` block.
    let diff_with = |name: &str, line: &str| {
        let v = lab_variant(name, |t| {
            t.replace(
                "  connect_timeout: 10\n",
                &format!("  connect_timeout: 10\n  {line}\n"),
            )
        });
        cli(&["diff", v.to_str().unwrap()])
    };
    let out = diff_with("user-proxy", "config_file: .state/user-proxy.ssh_config");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut used: Vec<String> = std::fs::read_to_string(&marker)
        .expect("the user's ProxyCommand ran")
        .lines()
        .map(String::from)
        .collect();
    used.sort();
    assert_eq!(used, [lb(), web1(), web2()], "once per host");

    let out = diff_with("connector-ssh", "connector: ssh");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A web server without a database role has a witness (src/witness.rs): in sync, it
/// answers from a few coreutils and no agent starts; any drift goes to the agent, which
/// reports and repairs it as before.
fn a_web_server_in_sync_is_vouched_for_without_the_agent_and_drift_still_shows() {
    setup();
    baseline();
    sh(&root().join("lab/down"), &["web-03"]);
    let up = sh(&root().join("lab/up"), &["web-03"]);
    assert!(up.status.success(), "{}", text(&up));
    let variant = lab_variant("web-only-web-03", |t| {
        t.replace(
            "    roles: [web, db-replica]\n",
            "    roles: [web, db-replica]\n  web-03:\n    address: 10.231.1.13\n    roles: [web]\n",
        )
    });
    let v = variant.to_str().unwrap();
    apply_ok(v, &[]);

    let vouched = |out: &Output| {
        String::from_utf8_lossy(&out.stderr).contains("Checked web-03 in sync (no agent)")
    };
    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));
    let out = cli(&["apply", "-v", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(vouched(&out), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for db_host in ["web-01", "web-02"] {
        assert!(
            !stderr.contains(&format!("Checked {db_host}")),
            "database hosts get a full observe"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sshd_sessions_since("web-03", &since),
        1,
        "one command on web-03"
    );
    assert_eq!(
        exec("web-03", &["sh", "-c", "pgrep -f 'foobar_agen[t]' || true"]).trim(),
        "",
        "no agent ran"
    );

    let ini = "/etc/foobar/app.ini";
    let drifts: [(&str, &[&str], &str); 5] = [
        (
            "content",
            &["sh", "-c", "echo '# by hand' >> /etc/nginx/nginx.conf"],
            "-# by hand",
        ),
        (
            "mode",
            &["chmod", "0644", ini],
            "/etc/foobar/app.ini: mode 0644",
        ),
        (
            "nginx stopped",
            &["service", "nginx", "stop"],
            "nginx start (not running)",
        ),
        (
            "release",
            &["ln", "-sfn", "/tmp", "/srv/foobar/current"],
            "release tmp ->",
        ),
        (
            "manifest",
            &[
                "sh",
                "-c",
                "echo '[]' > /var/lib/foobar-infra/manifest.json",
            ],
            // Every file is in place; only the record of them is missing.
            "record the managed-file manifest",
        ),
    ];
    for (what, argv, shown) in drifts {
        exec("web-03", argv);
        let diff = cli(&["diff", "-v", v]);
        assert!(!vouched(&diff), "{what}: not vouched for\n{}", text(&diff));
        assert_eq!(diff.status.code(), Some(2), "{what}: {}", text(&diff));
        let stdout = String::from_utf8_lossy(&diff.stdout);
        assert!(
            stdout.contains("== web-03") && stdout.contains(shown),
            "{what}: {stdout}"
        );
        apply_ok(v, &[]);
        let again = cli(&["diff", "-v", v]);
        assert_eq!(again.status.code(), Some(0), "{what}: {}", text(&again));
        assert!(
            vouched(&again),
            "{what}: repaired, vouched for again\n{}",
            text(&again)
        );
    }

    // Back to the lab's shape; web-03 goes away.
    apply_ok(&inv(), &[]);
    assert!(sh(&root().join("lab/down"), &["web-03"]).status.success());
}

/// The connections start while the plan is rendered; a run that then fails before
/// observing (here: a secret file that is missing) closes them all and runs nothing.
fn a_missing_secret_fails_the_run_and_leaves_no_connection_behind() {
    setup();
    let variant = lab_variant("missing-secret", |t| {
        t.replace(
            "{ file: .state/db_app_password }",
            "{ file: .state/no-such-secret-file }",
        )
    });
    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));
    let out = cli(&["apply", variant.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("db_app_password"),
        "names the secret: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(300));
    for host in ["lb-01", "web-01", "web-02"] {
        assert_eq!(sshd_sessions_since(host, &since), 0, "{host}: nothing ran");
    }
    let masters: Vec<String> = processes_matching(&addr("10.231."))
        .into_iter()
        .filter(|l| l.starts_with("ssh ") && l.contains(" -M "))
        .collect();
    assert!(masters.is_empty(), "no master left running: {masters:?}");
}

// ---------------------------------------------------------------- issue 20, findings 4-7, 12

/// The CLI with one more environment variable (a fresh place for the controller's own
/// files: XDG_STATE_HOME for its host records, XDG_CACHE_HOME for kept connections).
fn cli_env(key: &str, value: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_foobar-infra"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env(key, value)
        .output()
        .expect("running foobar-infra")
}

/// The pid holding the host lock's flock on `host` (from /proc/locks), if any.
fn flock_holder(host: &str) -> Option<String> {
    let ino = exec_raw(
        host,
        &["stat", "-c", "%i", "/var/lib/foobar-infra/lock.flock"],
    );
    let ino = String::from_utf8_lossy(&ino.stdout).trim().to_string();
    if ino.is_empty() {
        return None;
    }
    let locks = exec(host, &["cat", "/proc/locks"]);
    let suffix = format!(":{ino}");
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 5 && f[1] == "FLOCK" && f[5].ends_with(&suffix)).then(|| f[4].to_string())
    })
}

/// Takes the host lock's flock on `host` with a process that keeps it until killed (as a
/// run's agent keeps it while the run lives); that process's pid there.
fn hold_lock_flock(host: &str) -> String {
    let script = "import fcntl, os, time\n\
                  os.makedirs('/var/lib/foobar-infra', 0o700, exist_ok=True)\n\
                  fd = os.open('/var/lib/foobar-infra/lock.flock', os.O_RDWR | os.O_CREAT, 0o600)\n\
                  fcntl.flock(fd, fcntl.LOCK_EX)\n\
                  time.sleep(300)\n";
    let c = container(host);
    let out = docker(&["exec", "-d", &c, "python3", "-c", script]);
    assert!(out.status.success(), "{}", text(&out));
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            pid = flock_holder(host);
            pid.is_some()
        }),
        "the lock's flock was not taken on {host}"
    );
    pid.unwrap()
}

/// Finding 4 of issue 20 (SECURITY.md): `apply plan.json` loaded the inventory named in
/// the plan and took each file's mode, owner and service from it. Now the inventory is
/// the one beside the plan (by its hash) or given with --inventory, another one is
/// refused, and an edited plan fails its own checksum before anything connects.
fn finding_4_apply_plan_takes_its_inventory_from_the_command_line_and_refuses_an_edited_plan() {
    setup();
    baseline();
    let variant = lab_variant("plan-body-size", |t| {
        format!("{t}nginx:\n  client_max_body_size: 14m\n")
    });
    let v = variant.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let plan = elsewhere.path().join("plan.json");
    let p = plan.to_str().unwrap();
    let out = cli(&["plan", v, "--out", p]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let before = managed_hashes();

    // No inventory beside the plan and none given: the one the plan names is not read.
    let out = cli(&["apply", p]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--inventory"), "{stderr}");
    assert!(!stderr.contains("Connecting"), "{stderr}");
    // Another inventory than the plan's: refused.
    let out = cli(&["apply", p, "--inventory", &inv()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another inventory"),
        "{}",
        text(&out)
    );
    // Edited after `plan` wrote it (a file's mode; the inventory it names): its checksum.
    let original = std::fs::read_to_string(&plan).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 2] = [
        ("mode", |v| v["hosts"][1]["files"][0]["mode"] = 0o666.into()),
        ("inventory", |v| v["inventory"] = "/tmp/other.yaml".into()),
    ];
    for (what, edit) in edits {
        let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
        edit(&mut json);
        let edited = elsewhere.path().join(format!("edited-{what}.json"));
        std::fs::write(&edited, json.to_string()).unwrap();
        let out = cli(&["apply", edited.to_str().unwrap(), "--inventory", v]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("does not match its own checksum"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("Connecting"), "{what}: {stderr}");
    }
    assert_eq!(before, managed_hashes(), "nothing changed on any host");

    // The plan as made, with the inventory it was made from: applied.
    let out = cli(&["apply", p, "--inventory", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(exec(
        "web-01",
        &["cat", "/etc/nginx/sites-foobar/www.foobar.com.conf"]
    )
    .contains("client_max_body_size 14m"));
    // A plan beside its inventory finds it by hash (the lab's inventory again, with a
    // comment of its own: no other file there has its hash).
    let back = lab_variant("plan-beside", |t| format!("# beside its plan\n{t}"));
    let beside = back.with_extension("json");
    let out = cli(&[
        "plan",
        back.to_str().unwrap(),
        "--out",
        beside.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cli(&["apply", beside.to_str().unwrap()]);
    let _ = std::fs::remove_file(&beside);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(cli(&["diff", &inv()]).status.code(), Some(0));
}

/// Finding 5 of issue 20: without `=ADDRESS`, `--prune-host NAME` took the address from
/// any host's history, which that host can write. Now only this controller's own record
/// (or the command line), shown and, for apply, confirmed: a forged history entry leads
/// nowhere, and nothing connects before the address is settled.
fn finding_5_prune_host_never_takes_an_address_from_a_hosts_history() {
    setup();
    baseline();
    let state = tempfile::tempdir().unwrap();
    // A host (compromised, or reused) says web-09 was at web-02's address.
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            &addr(
                r#"echo '{"run_id": "forged", "result": "applied", "hosts": {"web-09": "10.231.1.12"}}' >> /var/lib/foobar-infra/history.jsonl"#,
            ),
        ],
    );
    let before = managed_hashes();
    let since = docker_now();
    std::thread::sleep(Duration::from_millis(50));
    for cmd in ["diff", "apply"] {
        let out = cli_env(
            "XDG_STATE_HOME",
            state.path(),
            &[cmd, &inv(), "--prune-host", "web-09"],
        );
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no record of web-09") && stderr.contains("web-09=ADDRESS"),
            "{cmd}: {stderr}"
        );
        assert!(!stderr.contains("Pruning"), "{cmd}: {stderr}");
    }
    std::thread::sleep(Duration::from_millis(300));
    for host in ["lb-01", "web-01", "web-02"] {
        assert_eq!(
            sshd_sessions_since(host, &since),
            0,
            "{host}: nothing connected"
        );
    }
    assert_eq!(before, managed_hashes(), "nothing changed on any host");

    // This controller's own record: shown, and without a terminal apply wants --yes.
    let books = state.path().join("foobar-infra/hosts");
    let mut book = foobar_infra::address_book::AddressBook::load(&books, &lab_inventory()).unwrap();
    book.hosts.insert(
        "web-09".into(),
        foobar_infra::address_book::Recorded {
            address: addr("10.231.1.19").parse().unwrap(),
            applied: 1_796_300_000,
        },
    );
    book.save(&books).unwrap();
    let out = cli_env(
        "XDG_STATE_HOME",
        state.path(),
        &["apply", &inv(), "--prune-host", "web-09"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr("web-09 at 10.231.1.19")) && stderr.contains("--yes"),
        "{stderr}"
    );
    assert!(!stderr.contains("Connecting"), "{stderr}");
    // Each apply records the inventory's hosts (the record --prune-host reads).
    let out = cli_env("XDG_STATE_HOME", state.path(), &["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let book = foobar_infra::address_book::AddressBook::load(&books, &lab_inventory()).unwrap();
    assert_eq!(book.hosts["web-02"].address.to_string(), web2());
    exec(
        "web-01",
        &[
            "sed",
            "-i",
            "/\"forged\"/d",
            "/var/lib/foobar-infra/history.jsonl",
        ],
    );
}

/// Finding 6 of issue 20: the kept agent's socket (`--persist`) belonged to the SSH
/// login user, so any process of a sudo user reached a root agent. Now: logged in as
/// root, the socket is root's (0600) in a directory only root may enter; logged in as
/// deploy, the socket must be deploy's (sshd connects as deploy), but every connection
/// must first send the daemon's token, which only the tool has: deploy's own processes
/// (without sudo) get no greeting and no answer.
fn finding_6_the_kept_agents_socket_is_root_only_or_asks_for_the_tools_token() {
    setup();
    baseline();
    let cache = tempfile::tempdir().unwrap();
    let persist = |inventory: &str, verbose: bool| {
        let mut args = vec!["apply", "--persist", "30", inventory];
        if verbose {
            args.insert(1, "-v");
        }
        cli_env("XDG_CACHE_HOME", cache.path(), &args)
    };
    // As deploy, without sudo: connect to `socket`, send `first`, read what comes back.
    let as_deploy = |socket: &str, first: &str| {
        let script = "import socket, sys\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.settimeout(15)\n\
                      try:\n    s.connect(sys.argv[1])\n\
                      except OSError as e:\n    print('refused:', e); sys.exit(0)\n\
                      s.sendall(sys.argv[2].encode())\n\
                      print('answer:', repr(s.recv(200)))\n";
        let out = docker(&[
            "exec",
            "-u",
            "deploy",
            &container("web-01"),
            "python3",
            "-c",
            script,
            socket,
            first,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let request = "18\n{\"op\": \"observe\"}";

    let out = persist(&inv(), false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let root_socket = exec(
        "web-01",
        &[
            "sh",
            "-c",
            "ls -t /run/foobar-infra/root/agent-*.0.sock | head -n 1",
        ],
    );
    let root_socket = root_socket.trim();
    assert_eq!(
        exec(
            "web-01",
            &["stat", "-c", "%a %U", "/run/foobar-infra/root", root_socket]
        )
        .trim(),
        "700 root\n600 root"
    );
    let got = as_deploy(root_socket, request);
    assert!(
        got.starts_with("refused:") && got.contains("Permission denied"),
        "{got}"
    );

    let deploy = lab_variant("deploy-persist", |t| {
        t.replace("  user: root", "  user: deploy")
    });
    let d = deploy.to_str().unwrap();
    let out = persist(d, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let again = persist(d, true);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Reusing web-01 (kept agent)"),
        "the tool's own connections still get in: {}",
        text(&again)
    );
    let socket = exec(
        "web-01",
        &[
            "sh",
            "-c",
            "ls -t /run/foobar-infra/agent-*.1000.sock | head -n 1",
        ],
    );
    let socket = socket.trim();
    for first in [
        request.to_string(),
        format!("{}\n{request}", "0".repeat(64)),
    ] {
        let got = as_deploy(socket, &first);
        assert_eq!(got, "answer: b''", "no greeting, no answer: {first:?}");
    }
    assert_eq!(
        exec("web-01", &["stat", "-c", "%a %U", "/run/foobar-infra/root"]).trim(),
        "700 root",
        "the token stays root's"
    );

    end_kept_agents(cache.path());
}

/// Finding 7 of issue 20: text from a host (here a managed file's lines in a diff)
/// reached the terminal as it was, escape sequences and all. Now control characters,
/// C1 controls and bidi overrides are printed escaped, in text and in --json.
fn finding_7_text_from_a_host_reaches_the_terminal_escaped() {
    setup();
    baseline();
    // ESC ] 0 ; (a window title) ... BEL, ESC [ 2 J (clear screen), U+009B (CSI), U+202E.
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            r"printf '# \033]0;owned\007\033[2J \302\23331m \342\200\256gnp.exe\n' >> /etc/nginx/nginx.conf",
        ],
    );
    let raw = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.contains('\x1b') || s.contains('\u{9b}') || s.contains('\u{202e}') || s.contains('\x07')
    };
    let out = cli(&["diff", &inv()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!raw(&out.stdout) && !raw(&out.stderr), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r"-# \x1b]0;owned\x07\x1b[2J \u{9b}31m \u{202e}gnp.exe"),
        "{stdout}"
    );
    let out = cli(&["diff", "--json", &inv()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!raw(&out.stdout), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc.to_string().contains("\\u001b]0;owned"),
        "the value itself is kept"
    );
    baseline();
}

/// Finding 12 of issue 20: a lock was stale by age alone (`--lock-timeout 1` took over a
/// live run), and after `kill -9` of the controller the next apply was refused while
/// its ssh masters lived on. Now the lock is a flock held by the run's agent: a live
/// one is never taken (the error names the holder and how to clear it), a dead run's
/// is free at once; and the masters end within seconds of the controller.
fn finding_12_a_lock_dies_with_its_holder_and_a_live_one_is_never_taken() {
    setup();
    baseline();
    let variant = lab_variant("lock-body-size", |t| {
        format!("{t}nginx:\n  client_max_body_size: 13m\n")
    });
    let v = variant.to_str().unwrap();
    let lock = |started: u64| {
        format!(
            r#"{{"owner": "alice@laptop", "pid": 4242, "started": {started}, "tool_version": "0.1.0", "run_id": "other-run", "host": "web-01"}}"#
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let write_lock = |text: String| {
        exec(
            "web-01",
            &[
                "sh",
                "-c",
                &format!("echo '{text}' > /var/lib/foobar-infra/lock.json"),
            ],
        )
    };

    // Live (its flock held) and an hour old: never taken, whatever --lock-timeout says.
    write_lock(lock(now - 3600));
    let holder = hold_lock_flock("web-01");
    let before = managed_hashes();
    let out = cli(&["apply", "--lock-timeout", "1", v]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("alice@laptop") && stderr.contains("other-run"),
        "names the holder: {stderr}"
    );
    assert!(
        stderr.contains("still in progress") && stderr.contains(&format!("kill {holder}")),
        "says how to clear it: {stderr}"
    );
    assert_eq!(before, managed_hashes(), "nothing changed on any host");

    // Its holder gone, a lock.json is a dead run's: taken at once, however recent.
    exec("web-01", &["kill", &holder]);
    assert!(wait_until(Duration::from_secs(10), || flock_holder(
        "web-01"
    )
    .is_none()));
    write_lock(lock(now));
    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the lock left by run other-run"),
        "{}",
        text(&out)
    );

    // kill -9 of the controller while it stages: no master of that run outlives it by
    // more than a few seconds, no agent stays on the hosts, the next apply goes ahead.
    let masters = || -> Vec<String> {
        processes_matching(&addr("10.231."))
            .into_iter()
            .filter(|l| l.starts_with("ssh ") || l.contains(" ssh-connect "))
            .collect()
    };
    let earlier = masters();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_foobar-infra"))
        .args(["apply", "-v", &inv()])
        .current_dir(root())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(run.stderr.take().unwrap())) {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("Agent web-01 stage") || line.contains("Agent web-02 stage") {
            break;
        }
    }
    run.kill().unwrap(); // SIGKILL
    let _ = run.wait();
    assert!(
        seen.iter().any(|l| l.contains(" stage")),
        "the run reached staging: {seen:?}"
    );
    let t0 = std::time::Instant::now();
    let ours = |now: Vec<String>| -> Vec<String> {
        now.into_iter().filter(|l| !earlier.contains(l)).collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || ours(masters()).is_empty()),
        "masters left after {:?}: {:?}",
        t0.elapsed(),
        ours(masters())
    );
    eprintln!("the killed run's masters ended within {:?}", t0.elapsed());
    for host in ["web-01", "web-02"] {
        assert!(
            wait_until(Duration::from_secs(15), || exec(
                host,
                &["sh", "-c", "pgrep -f 'foobar_agen[t]' || true"]
            )
            .trim()
            .is_empty()),
            "{host}: an agent of the killed run is still there"
        );
    }
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "the next apply: {}", text(&out));
    assert_eq!(cli(&["diff", &inv()]).status.code(), Some(0));
}

/// Ends the kept masters of a `--persist 30` run (their records under `cache` name the
/// control sockets) and the kept agents on the lab hosts.
fn end_kept_agents(cache: &std::path::Path) {
    for entry in std::fs::read_dir(cache.join("foobar-infra/ssh")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && p.extension().is_none() {
            let ctl = std::fs::read_to_string(&p).unwrap();
            let _ = std::process::Command::new("ssh")
                .args(["-S", ctl.trim(), "-O", "exit", "lab"])
                .output();
        }
    }
    for host in ["lb-01", "web-01", "web-02"] {
        exec_raw(host, &["pkill", "-f", "listen [0-9a-f]+ 30$"]);
    }
}
