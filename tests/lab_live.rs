//! End-to-end tests of issue 18 against the lab, on either host kind (`LAB_OS`):
//! a reload counts only when the service shows the new config running, and what a
//! real host brings (a port held by another process, services disabled at boot, a
//! reboot) is seen and handled before or without an apply.

mod common;
#[path = "support/overrides.rs"]
mod overrides;

use std::time::Duration;

use common::*;

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
            let r = http_get(LB, "/health")
                .unwrap_or_else(|e| panic!("request {i} to the load balancer: {e}"));
            assert_eq!(r.status, 200, "request {i}: {} {}", r.status, r.body);
            r.header("X-Served-By").unwrap_or("?").to_string()
        })
        .collect()
}

fn both_backends_serve() -> bool {
    wait_until(Duration::from_secs(30), || {
        (0..4).all(|_| http_get(LB, "/health").is_ok_and(|r| r.status == 200))
    }) && {
        let who = served_by(10);
        who.iter().any(|s| s == "web-01") && who.iter().any(|s| s == "web-02")
    }
}

#[test]
fn a_haproxy_config_that_passes_its_check_but_cannot_load_is_a_failed_reload() {
    let Some(_g) = lab() else { return };
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

#[test]
fn an_nginx_reload_that_cannot_bind_is_a_failed_reload() {
    let Some(_g) = lab() else { return };
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
