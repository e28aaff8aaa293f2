//! End-to-end tests of `apply` and `diff` against the real lab (issue 4): three Debian
//! containers with sshd, nginx, haproxy and MariaDB, reached over SSH like real hosts.
//! Run by `cargo test`; they need Docker (see tests/common).

mod common;
#[path = "support/overrides.rs"]
mod overrides;

use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// The first apply on the fresh lab, made once by the fixture.
static FIRST_APPLY: OnceLock<Output> = OnceLock::new();

fn setup() -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = lab()?;
    FIRST_APPLY.get_or_init(|| cli(&["apply", lab_inventory().to_str().unwrap()]));
    Some(guard)
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
            let r = http_get(LB, path)
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

#[test]
fn fresh_lab_apply_then_round_robin_over_both_web_servers() {
    let Some(_g) = setup() else { return };
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
            http_get(LB, "/health")
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

#[test]
fn second_apply_is_a_no_op_with_one_connection_and_one_command_per_host() {
    let Some(_g) = setup() else { return };
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

/// The agent runs from a cached copy on the host (compiled once per version): in a
/// root-only directory, rewritten whenever its bytes differ from the tool's (a tampered
/// copy never runs), and not used at all from a directory others could write.
#[test]
fn the_agents_cached_copy_is_root_only_and_never_runs_tampered() {
    let Some(_g) = setup() else { return };
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
        &["sh", "-c", &format!("ls {DIR}/foobar_agent_*.py")],
    );
    let copies: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(
        copies.len(),
        1,
        "one agent version on a fresh lab: {listing}"
    );
    let copy = copies[0].to_string();
    let genuine = remote_sha("lb-01", &copy);
    let tamper = format!("echo 'raise SystemExit(99)' > {copy}");

    exec("web-01", &["sh", "-c", &tamper]);
    in_sync();
    assert_eq!(
        remote_sha("web-01", &copy),
        genuine,
        "the copy is rewritten"
    );

    // A directory others can write: the script runs from memory; the copy is left as is.
    exec("web-01", &["chmod", "777", DIR]);
    exec("web-01", &["sh", "-c", &tamper]);
    in_sync();
    assert_eq!(
        exec("web-01", &["cat", &copy]).trim(),
        "raise SystemExit(99)"
    );
    exec("web-01", &["chmod", "700", DIR]);
    in_sync();
    assert_eq!(remote_sha("web-01", &copy), genuine);
}

#[test]
fn a_changed_variable_shows_in_diff_and_is_served_after_apply() {
    let Some(_g) = setup() else { return };
    baseline();
    let variant = lab_variant("health-path", |t| {
        format!("{t}haproxy:\n  health_check:\n    path: /healthz\n")
    });
    let v = variant.to_str().unwrap();
    assert_ne!(http_get(LB, "/healthz").map(|r| r.status).unwrap_or(0), 200);

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
        http_get(LB, "/healthz")
            .map(|r| r.status == 200 && r.body.starts_with("ok web-0"))
            .unwrap_or(false)
    }));
    assert_eq!(cli(&["diff", v]).status.code(), Some(0));
    baseline();
}

#[test]
fn drift_on_a_host_is_reported_and_repaired() {
    let Some(_g) = setup() else { return };
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

#[test]
fn an_invalid_nginx_override_changes_nothing_anywhere() {
    let Some(_g) = setup() else { return };
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
    let r = http_get(LB, "/health").expect("site still serves");
    assert_eq!(r.status, 200);
}

#[test]
fn a_host_that_is_down_fails_the_run_before_anything_changes() {
    let Some(_g) = setup() else { return };
    baseline();
    let before = managed_hashes();
    let variant = lab_variant("bigger-body", |t| {
        format!("{t}nginx:\n  client_max_body_size: 20m\n")
    });
    let v = variant.to_str().unwrap().to_string();

    let stopped = docker(&["stop", "-t", "20", "foobar-lab-web-02"]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    let out = cli(&["apply", &v]);
    let started = docker(&["start", "foobar-lab-web-02"]);
    assert!(started.status.success());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web-02: cannot connect to root@10.231.1.12:22"),
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

#[test]
fn an_unknown_host_key_fails_closed() {
    let Some(_g) = setup() else { return };
    let bad = root().join("lab/.state/known_hosts.bad");
    let good = std::fs::read_to_string(root().join("lab/.state/known_hosts")).unwrap();
    // web-01's line replaced by lb-01's key: a mismatch, as after a man-in-the-middle.
    let lb_key = good
        .lines()
        .find(|l| l.starts_with(LB))
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_string();
    let edited: Vec<String> = good
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{WEB1} ")) {
                format!("{WEB1} {lb_key}")
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

#[test]
fn a_stopped_nginx_is_taken_out_by_the_health_check() {
    let Some(_g) = setup() else { return };
    baseline();
    exec("web-01", &["service", "nginx", "stop"]);
    // Every request succeeds, even before the check marks web-01 down (retries + redispatch).
    let mut served = Vec::new();
    for i in 0..20 {
        let r = http_get(LB, "/health").unwrap_or_else(|e| panic!("request {i}: {e}"));
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

#[test]
fn a_lock_held_by_another_run_stops_apply_naming_the_holder() {
    let Some(_g) = setup() else { return };
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
    let variant = lab_variant("locked", |t| {
        format!("{t}nginx:\n  client_max_body_size: 12m\n")
    });
    let out = cli(&["apply", variant.to_str().unwrap()]);
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

#[test]
fn a_non_root_user_works_through_sudo() {
    let Some(_g) = setup() else { return };
    baseline();
    let variant = lab_variant("deploy-user", |t| {
        t.replace("  user: root", "  user: deploy")
    });
    let v = variant.to_str().unwrap();
    let out = cli(&["apply", "-v", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deploy@10.231.1.11:22"), "{stderr}");
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

#[test]
fn limit_touches_only_the_selected_hosts() {
    let Some(_g) = setup() else { return };
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
#[test]
fn with_persist_the_next_run_makes_no_remote_command_and_still_sees_drift() {
    let Some(_g) = setup() else { return };
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
    for addr in [LB, WEB1, WEB2] {
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
                "stat -c '%a %U' /run/foobar-infra/agent-*.0.sock",
            ],
        );
        assert_eq!(socket.trim(), "600 root", "{host}");
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

    // End the kept masters (their records name the control sockets) and the agents.
    for entry in std::fs::read_dir(cache.path().join("foobar-infra/ssh")).unwrap() {
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
#[test]
fn a_proxy_command_in_the_users_ssh_config_wins_over_the_tcp_connector() {
    let Some(_g) = setup() else { return };
    baseline();
    let state = root().join("lab/.state");
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
    assert_eq!(used, [LB, WEB1, WEB2], "once per host");

    let out = diff_with("connector-ssh", "connector: ssh");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A web server without a database role has a witness (src/witness.rs): in sync, it
/// answers from a few coreutils and no agent starts; any drift goes to the agent, which
/// reports and repairs it as before.
#[test]
fn a_web_server_in_sync_is_vouched_for_without_the_agent_and_drift_still_shows() {
    let Some(_g) = setup() else { return };
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
#[test]
fn a_missing_secret_fails_the_run_and_leaves_no_connection_behind() {
    let Some(_g) = setup() else { return };
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
    let masters: Vec<String> = processes_matching("10.231.")
        .into_iter()
        .filter(|l| l.starts_with("ssh ") && l.contains(" -M "))
        .collect();
    assert!(masters.is_empty(), "no master left running: {masters:?}");
}
