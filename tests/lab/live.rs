//! End-to-end tests of issue 18 against the lab, on either host kind (`LAB_OS`):
//! a reload counts only when the service shows the new config running, a server
//! drained right after a HAProxy reload waits for the old process's last request, and
//! what a real host brings (a port held by another process, services disabled at boot,
//! a reboot) is seen and handled before or without an apply.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::overrides;

lab_tests!(
    a_haproxy_config_that_passes_its_check_but_cannot_load_is_a_failed_reload,
    an_nginx_reload_that_cannot_bind_is_a_failed_reload,
    every_host_restarted_after_a_converged_apply_serves_with_no_apply_between,
    a_port_held_by_another_process_is_named_and_stops_apply_before_anything_changes,
    a_host_paused_during_its_commit_fails_the_run_in_bounded_time_and_never_commits_late,
    a_release_switched_after_a_reload_waits_for_the_old_haproxys_last_request,
);

fn inv() -> String {
    lab_inventory().display().to_string()
}

/// The lab converged, its web servers serving.
fn converged() {
    for h in ["web-01", "web-02"] {
        exec_raw(h, &["service", "nginx", "start"]);
    }
    apply_ok(&inv(), &[]);
}

/// Every request of `n` on a new connection through the load balancer answers 200;
/// returns who served them.
fn served_by(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = http_get(lb(), "/health")
                .unwrap_or_else(|e| panic!("request {i} to the load balancer: {e}"));
            assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.body);
            r.header("X-Served-By").unwrap_or("?").to_string()
        })
        .collect()
}

/// Both web servers serve through the load balancer, within a bounded wait (a freshly
/// started HAProxy counts its servers up with their health checks first).
fn both_backends_serve() -> bool {
    wait_until(Duration::from_secs(30), both_backends_serve_once) && {
        let who = served_by(10);
        who.iter().any(|s| s == "web-01") && who.iter().any(|s| s == "web-02")
    }
}

fn a_haproxy_config_that_passes_its_check_but_cannot_load_is_a_failed_reload() {
    lab();
    converged();
    let cfg = "/etc/haproxy/haproxy.cfg";
    let before = remote_sha("lb-01", cfg);
    // `haproxy -c` does not bind: a bind to the port sshd holds passes it, and only the
    // reload finds out. (An address not on the host would bind here: the lab allows
    // non-local binds for the VIP.)
    let dir = tempfile::tempdir().unwrap();
    overrides::override_template(
        &dir,
        "haproxy.cfg",
        "bind 127.0.0.1:{{ lb.stats_port }}",
        "bind 127.0.0.1:22",
    );
    let out = cli(&["apply", &inv(), "--templates", dir.path().to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lb-01") && err.contains("haproxy"),
        "names host and service: {all}"
    );
    // systemd's reload exits 0 and the live check finds the old process; Debian 12's
    // init script starts a new process (-sf) whose failure is its exit code.
    assert!(
        err.contains("new config was not loaded") || err.contains("haproxy reload failed"),
        "says the reload did not take: {all}"
    );
    assert!(
        err.contains("cannot bind") || err.contains("Address already in use"),
        "carries HAProxy's own message: {all}"
    );
    assert_eq!(
        remote_sha("lb-01", cfg),
        before,
        "the previous config is back in place"
    );
    // And it is the one running: the backends are UP and the site answers through both.
    assert!(
        wait_until(Duration::from_secs(20), || cli(&["status", &inv()])
            .status
            .success()),
        "status after the failed reload: {}",
        text(&cli(&["status", &inv()]))
    );
    assert!(both_backends_serve());
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(0), "in sync: {}", text(&diff));
}

fn an_nginx_reload_that_cannot_bind_is_a_failed_reload() {
    lab();
    converged();
    let site = "/etc/nginx/sites-foobar/www.foobar.com.conf";
    let before = remote_sha("web-01", site);
    // `nginx -t` binds nothing either: a second listener on sshd's port passes it.
    let dir = tempfile::tempdir().unwrap();
    overrides::override_template(
        &dir,
        "nginx-site.conf",
        "    listen 80 default_server;",
        "    listen 80 default_server;\n    listen 127.0.0.1:22;",
    );
    let out = cli(&[
        "apply",
        &inv(),
        "--limit",
        "web-01",
        "--templates",
        dir.path().to_str().unwrap(),
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web-01") && err.contains("nginx"),
        "names host and service: {all}"
    );
    assert!(
        err.contains("no new workers") || err.contains("new config was not loaded"),
        "says the reload did not take: {all}"
    );
    assert!(
        err.contains("bind()") || err.contains("Address already in use"),
        "carries nginx's own message: {all}"
    );
    assert_eq!(remote_sha("web-01", site), before, "previous site restored");
    assert!(both_backends_serve());
}

/// Turns a service off at boot the way the host's init system does it.
fn disable_at_boot(host: &str, service: &str) {
    if host_os(host) == "debian12" {
        exec(host, &["update-rc.d", service, "disable"]);
    } else {
        exec(host, &["systemctl", "disable", "--quiet", service]);
    }
}

fn replication_runs() -> bool {
    let status = exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    status.contains("Slave_IO_Running: Yes") && status.contains("Slave_SQL_Running: Yes")
}

fn every_host_restarted_after_a_converged_apply_serves_with_no_apply_between() {
    lab();
    converged();
    // As many images ship them: the stack's services installed but off at boot.
    for (host, services) in [
        ("lb-01", &["haproxy"][..]),
        ("web-01", &["nginx", "mariadb", "foobar-app"]),
        ("web-02", &["nginx", "mariadb", "foobar-app"]),
    ] {
        for s in services {
            disable_at_boot(host, s);
        }
    }
    let diff = cli(&["diff", &inv()]);
    let shown = text(&diff);
    assert_eq!(diff.status.code(), Some(2), "{shown}");
    assert!(shown.contains("not enabled at boot"), "{shown}");
    apply_ok(&inv(), &[]);
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));

    let restart = docker(&[
        "restart",
        "-t",
        "30",
        &container("lb-01"),
        &container("web-01"),
        &container("web-02"),
    ]);
    assert!(restart.status.success(), "{}", text(&restart));
    // No apply in between: what is enabled at boot is the whole stack.
    assert!(
        wait_until(Duration::from_secs(120), both_backends_serve_once),
        "the site answers through the load balancer with both web servers after the reboot"
    );
    assert!(
        wait_until(Duration::from_secs(60), replication_runs),
        "replication runs again after the reboot"
    );
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(0), "in sync: {}", text(&diff));
}

/// One try of [`both_backends_serve`] without its own wait (for an outer bounded wait).
fn both_backends_serve_once() -> bool {
    let who: Vec<String> = (0..10)
        .filter_map(|_| http_get(lb(), "/health").ok())
        .filter(|r| r.status == 200)
        .filter_map(|r| r.header("X-Served-By").map(str::to_string))
        .collect();
    who.len() == 10 && who.iter().any(|s| s == "web-01") && who.iter().any(|s| s == "web-02")
}

/// Runs `service NAME ACTION` the way the host's init system does it.
fn service(host: &str, name: &str, action: &str) {
    if host_os(host) == "debian12" {
        exec(host, &["service", name, action]);
    } else {
        exec(host, &["systemctl", action, name]);
    }
}

fn a_port_held_by_another_process_is_named_and_stops_apply_before_anything_changes() {
    lab();
    converged();
    // The distribution's nginx on the load balancer, as an image that carries it has it.
    service("lb-01", "haproxy", "stop");
    service("lb-01", "nginx", "start");
    let nginx = pidfile("lb-01", "/run/nginx.pid");
    let before = managed_hashes();

    let diff = cli(&["diff", &inv()]);
    let shown = text(&diff);
    assert_eq!(diff.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "lb-01: port 80 is held by nginx (pid {nginx}), not haproxy"
        )),
        "diff names the process: {shown}"
    );
    let json = cli(&["diff", &inv(), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON document");
    assert_eq!(doc["errors"][0]["kind"], "port-held", "{}", text(&json));
    assert_eq!(doc["errors"][0]["host"], "lb-01");

    let out = cli(&["apply", &inv()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("port 80 is held by nginx"), "{all}");
    assert!(all.contains("nothing was changed on any host"), "{all}");
    assert_eq!(managed_hashes(), before, "no file changed on any host");
    assert_eq!(
        pidfile("lb-01", "/run/nginx.pid"),
        nginx,
        "the holder was left alone"
    );

    // Once the holder is gone, apply brings HAProxy back.
    service("lb-01", "nginx", "stop");
    apply_ok(&inv(), &[]);
    assert!(both_backends_serve());
}

/// The last history record web-02 wrote itself (its own file: the tool may have given up).
fn last_result(host: &str) -> String {
    let all = exec(
        host,
        &["tail", "-n", "1", "/var/lib/foobar-infra/history.jsonl"],
    );
    let rec: serde_json::Value = serde_json::from_str(all.trim()).expect("a history record");
    rec["result"].as_str().unwrap_or("").to_string()
}

fn a_host_paused_during_its_commit_fails_the_run_in_bounded_time_and_never_commits_late() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;
    lab();
    converged();
    let cnf = "/etc/mysql/mariadb.conf.d/60-foobar.cnf";
    let before = remote_sha("web-02", cnf);
    let pool = sql("web-02", "SELECT @@innodb_buffer_pool_size");
    // A MariaDB setting: the replica (web-02) restarts first, one host at a time.
    let variant = lab_variant("bigger-pool", |t| {
        format!("{t}mysql:\n  innodb_buffer_pool_size: 192M\n")
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_foobar-infra"))
        .args(["apply", variant.to_str().unwrap()])
        .current_dir(root())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains("Restarting web-02") {
            break;
        }
    }
    assert!(said.contains("Restarting web-02"), "{said}");
    let paused = docker(&["pause", &container("web-02")]);
    let t0 = Instant::now();
    for line in lines {
        said.push_str(&line.unwrap());
        said.push('\n');
    }
    let status = child.wait().unwrap();
    let took = t0.elapsed();
    assert!(docker(&["unpause", &container("web-02")]).status.success());
    assert!(paused.status.success(), "{}", text(&paused));
    assert_eq!(status.code(), Some(1), "{said}");
    // The documented bound: three missed keepalives, 5 s apart.
    assert!(
        took < Duration::from_secs(40),
        "failed after {took:?}: {said}"
    );
    assert!(
        said.contains("web-02") && said.contains("connection was lost"),
        "names the host that did not answer: {said}"
    );
    // After the unpause, the agent left on web-02 undoes rather than finishes.
    assert!(
        wait_until(Duration::from_secs(90), || {
            exec_raw("web-02", &["pgrep", "-f", "foobar_agent|import sys,os"])
                .stdout
                .is_empty()
        }),
        "the agent on web-02 ends"
    );
    assert_eq!(
        remote_sha("web-02", cnf),
        before,
        "web-02 keeps its previous .cnf"
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            exec_raw(
                "web-02",
                &[
                    "mariadb",
                    "-N",
                    "-B",
                    "-e",
                    "SELECT @@innodb_buffer_pool_size",
                ],
            )
            .stdout
            .starts_with(pool.as_bytes())
        }),
        "MariaDB on web-02 runs its previous settings"
    );
    assert_eq!(last_result("web-02"), "aborted");
    // The next apply converges (no lock left behind), and the baseline comes back.
    apply_ok(variant.to_str().unwrap(), &[]);
    apply_ok(&inv(), &[]);
}

/// After a reload the old HAProxy process still serves what it accepted before, by its
/// own view of the servers (web-01 in the pool, whatever the new process was told): a run
/// that reloads HAProxy and then switches web-01's release must wait for that process
/// before restarting web-01's application (CI saw a 502 from a canary restarted 50 ms
/// after a reload). A request held half-sent on a connection the old process accepted,
/// finished 1 s after the reload, is answered 200, and web-01's application restarts
/// after it.
fn a_release_switched_after_a_reload_waits_for_the_old_haproxys_last_request() {
    lab();
    converged();
    let tag = "old-haproxy";
    example_app_copy(tag);
    let variant = lab_variant("inventory-old-haproxy", |t| {
        format!(
            "{}haproxy:\n  maxconn: 4000\n",
            t.replace("source: ../examples/app", &format!("source: app-{tag}"))
        )
    });
    let before = haproxy_pids();
    let mut held = TcpStream::connect((lb(), 80)).expect("a connection to the load balancer");
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n")
        .unwrap();
    let run = {
        let variant = variant.display().to_string();
        std::thread::spawn(move || cli(&["apply", "-v", &variant]))
    };
    // The reload: a HAProxy process that was not there before (bounded wait).
    assert!(
        wait_until(Duration::from_secs(60), || haproxy_pids()
            .iter()
            .any(|p| !before.contains(p))),
        "HAProxy was not reloaded within 60 s (processes {before:?})"
    );
    std::thread::sleep(Duration::from_secs(1));
    let sent = unix_now();
    held.write_all(b"\r\n").unwrap();
    let t0 = Instant::now();
    let (mut answer, mut first) = (Vec::new(), None);
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = held.read(&mut buf) {
        first.get_or_insert(t0.elapsed());
        answer.extend_from_slice(&buf[..n]);
    }
    let closed = t0.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    let served_by = (answer.lines())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-served-by")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the held request, answered after {first:?}: {answer}\nthe run: {}",
        text(&out)
    );
    let restarted = app_started_at("web-01");
    assert!(
        restarted > sent,
        "web-01's application restarted {:.3} s before the old HAProxy process's last \
         request was sent\nthe run: {}",
        sent - restarted,
        text(&out)
    );
    eprintln!(
        "old HAProxy's last request: answered by {served_by} {first:?} after it was sent, \
         closed after {closed:?}; web-01's application restarted {:.3} s after it was sent",
        restarted - sent
    );
    apply_ok(&inv(), &[]);
}

/// The pids of every haproxy process on lb-01.
fn haproxy_pids() -> Vec<u32> {
    let out = exec_raw("lb-01", &["pidof", "haproxy"]);
    (String::from_utf8_lossy(&out.stdout).split_whitespace())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// When the oldest gunicorn process (the master) on `host` started, in Unix seconds to
/// the clock tick: its start since boot, placed on the clock by /proc/uptime (the lab
/// shares this machine's kernel and clock).
fn app_started_at(host: &str) -> f64 {
    let pid = exec(host, &["pgrep", "-o", "-f", "gunicorn"]);
    let script = "import os, sys, time\n\
        st = open('/proc/%s/stat' % sys.argv[1]).read().rsplit(')', 1)[1].split()\n\
        up = float(open('/proc/uptime').read().split()[0])\n\
        print(time.time() - up + int(st[19]) / os.sysconf('SC_CLK_TCK'))\n";
    let at = exec(host, &["python3", "-c", script, pid.trim()]);
    at.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{host}: gunicorn's start {at:?}: {e}"))
}
