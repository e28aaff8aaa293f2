//! End-to-end tests of reshaping the pool on the lab (issue 10): active-passive mode.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn served_by(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            http_get(LB, "/health")
                .map(|r| {
                    if r.status == 200 {
                        r.header("X-Served-By").unwrap_or("?").to_string()
                    } else {
                        format!("HTTP {}", r.status)
                    }
                })
                .unwrap_or_else(|e| format!("error {e}"))
        })
        .collect()
}

#[test]
fn active_passive_serves_from_the_active_and_fails_over_to_the_passive() {
    let Some(_g) = lab() else { return };
    let base = cli(&["apply", &lab_inventory().display().to_string()]);
    assert_eq!(base.status.code(), Some(0), "{}", text(&base));
    let variant = lab_variant("active-passive", |t| {
        format!("{t}haproxy:\n  mode: active-passive\n  passive: [web-02]\n")
    });
    let v = variant.to_str().unwrap();
    let diff = cli(&["diff", v]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(String::from_utf8_lossy(&diff.stdout)
        .contains("+    server web-02 10.231.1.12:80 check backup"));
    let pid = pidfile("lb-01", "/run/haproxy.pid");
    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("haproxy reload"),
        "switching modes is a reload"
    );
    let _ = pid;

    assert!(wait_until(Duration::from_secs(10), || served_by(1) == ["web-01"]));
    let ten = served_by(10);
    assert!(
        ten.iter().all(|s| s == "web-01"),
        "all on the active server: {ten:?}"
    );

    // The active server's nginx stops: the passive one answers.
    exec("web-01", &["service", "nginx", "stop"]);
    let t0 = Instant::now();
    let mut failures = 0;
    let mut first_passive = None;
    while t0.elapsed() < Duration::from_secs(20) {
        match served_by(1)[0].as_str() {
            "web-02" => {
                first_passive.get_or_insert(t0.elapsed());
                break;
            }
            "web-01" => {}
            _ => failures += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let gap = first_passive.expect("the passive server took over within 20 s");
    assert_eq!(failures, 0, "no request failed during the failover");
    eprintln!("active-passive: passive answering {gap:?} after nginx stopped on the active; {failures} failed requests meanwhile");
    assert!(served_by(10).iter().all(|s| s == "web-02"));

    // Back: the active server serves again once its checks pass (rise 2).
    exec("web-01", &["service", "nginx", "start"]);
    assert!(
        wait_until(Duration::from_secs(20), || served_by(1) == ["web-01"]),
        "back to the active server"
    );
    assert!(served_by(10).iter().all(|s| s == "web-01"));

    let out = cli(&["apply", &lab_inventory().display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
