//! End-to-end tests of reshaping the pool on the lab (issue 10): active-passive mode.

use std::time::{Duration, Instant};

use crate::common::*;

lab_tests!(
    active_passive_serves_from_the_active_and_fails_over_to_the_passive,
    two_load_balancers_share_a_floating_address_that_moves_when_one_dies,
    web_servers_join_and_leave_under_load_without_a_failed_request,
    a_host_removed_from_the_inventory_is_pruned_only_when_named,
);

fn served_by(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            http_get(lb(), "/health")
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

fn active_passive_serves_from_the_active_and_fails_over_to_the_passive() {
    lab();
    let base = cli(&["apply", &lab_inventory().display().to_string()]);
    assert_eq!(base.status.code(), Some(0), "{}", text(&base));
    let variant = lab_variant("active-passive", |t| {
        format!("{t}haproxy:\n  mode: active-passive\n  passive: [web-02]\n")
    });
    let v = variant.to_str().unwrap();
    let diff = cli(&["diff", v]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(String::from_utf8_lossy(&diff.stdout)
        .contains(&addr("+    server web-02 10.231.1.12:80 check backup")));
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

fn vip() -> String {
    addr("10.231.0.100")
}

fn two_load_balancers_share_a_floating_address_that_moves_when_one_dies() {
    lab();
    let up = sh(&root().join("lab/up"), &["lb-02"]);
    assert!(up.status.success(), "{}", text(&up));
    let variant = lab_variant("vip", |t| {
        t.replacen(
            "  web-01:",
            "  lb-02:\n    address: 10.231.0.12\n    roles: [lb]\n  web-01:",
            1,
        )
        .replace(
            "secrets:",
            "vip:\n  address: 10.231.0.100\n  prefix: 16\n  interface: eth0\nsecrets:",
        )
    });
    let v = variant.to_str().unwrap();
    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let vip_addr = vip();
    let holder = |h: &str| {
        exec_raw(h, &["ip", "-4", "addr", "show", "eth0"])
            .stdout
            .windows(vip_addr.len())
            .any(|w| w == vip_addr.as_bytes())
    };
    assert!(
        wait_until(Duration::from_secs(15), || holder("lb-01")),
        "lb-01 (highest priority) holds the address"
    );
    assert!(!holder("lb-02"));
    assert!(wait_until(Duration::from_secs(10), || http_get(
        &vip(),
        "/health"
    )
    .map(|r| r.status == 200)
    .unwrap_or(false)));

    // lb-01 dies; a bounded request loop at the floating address measures the gap.
    let stop = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(2));
        docker(&["kill", &container("lb-01")])
    });
    let t0 = Instant::now();
    let (mut first_fail, mut last_fail, mut ok_after) = (None, None, 0);
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(25) && n < 1000 && ok_after < 20 {
        n += 1;
        let ok = http_get(&vip(), "/health")
            .map(|r| r.status == 200)
            .unwrap_or(false);
        if ok {
            if last_fail.is_some() {
                ok_after += 1;
            }
        } else {
            first_fail.get_or_insert(t0.elapsed());
            last_fail = Some(t0.elapsed());
            ok_after = 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stop.join().unwrap().status.success());
    let gap = match (first_fail, last_fail) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    eprintln!("floating address: requests failed for {gap:?} after lb-01 was killed ({n} requests in all)");
    assert!(holder("lb-02"), "lb-02 took the address over");
    assert!(
        ok_after >= 20 || first_fail.is_none(),
        "requests succeed again through lb-02"
    );
    assert!(
        gap < Duration::from_secs(10),
        "at most a few seconds of failures: {gap:?}"
    );

    // lb-01 comes back (its entrypoint starts haproxy and keepalived) and takes the address back.
    assert!(docker(&["start", &container("lb-01")]).status.success());
    assert!(
        wait_until(Duration::from_secs(30), || holder("lb-01")),
        "lb-01 holds the address again"
    );
    let down = sh(&root().join("lab/down"), &["lb-02"]);
    assert!(down.status.success());
    assert!(wait_until(Duration::from_secs(30), || cli(&[
        "diff",
        &lab_inventory().display().to_string()
    ])
    .status
    .code()
    .is_some()));
}

fn web3() -> String {
    addr("10.231.1.13")
}

/// Requests at the load balancer in a thread while `f` runs: (ok, failures).
fn under_load(
    f: impl FnOnce() -> std::process::Output,
) -> (std::process::Output, usize, Vec<String>) {
    let load = std::thread::spawn(|| load_loop("/health", Duration::from_secs(20), 3000));
    std::thread::sleep(Duration::from_secs(1));
    let out = f();
    let (ok, failed) = load.join().unwrap();
    (out, ok, failed)
}

fn backends() -> Vec<String> {
    let stat = exec(
        "lb-01",
        &[
            "sh",
            "-c",
            "echo 'show stat' | socat stdio /run/haproxy/admin.sock",
        ],
    );
    let mut names: Vec<String> = stat
        .lines()
        .filter(|l| l.starts_with("web,") && !l.starts_with("web,BACKEND"))
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn web_servers_join_and_leave_under_load_without_a_failed_request() {
    lab();
    let base = lab_inventory().display().to_string();
    assert_eq!(cli(&["apply", &base]).status.code(), Some(0));
    for i in 0..10 {
        assert_eq!(
            http_post(web1(), "/items", &format!("text=before+web-03+{i}"))
                .unwrap()
                .status,
            201
        );
    }
    // A new, empty host (also when an earlier run left one behind).
    sh(&root().join("lab/down"), &["web-03"]);
    let up = sh(&root().join("lab/up"), &["web-03"]);
    assert!(up.status.success(), "{}", text(&up));

    // web-03 joins as a web server and a second replica.
    let with_web3 = |t: &str| {
        t.replace(
            "    roles: [web, db-replica]\n",
            "    roles: [web, db-replica]\n  web-03:\n    address: 10.231.1.13\n    roles: [web, db-replica]\n",
        )
    };
    let grow = lab_variant("grow", with_web3);
    let g = grow.to_str().unwrap();
    let diff = cli(&["diff", g]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(
        stdout.starts_with("== topology"),
        "topology first: {stdout}"
    );
    assert!(
        stdout.contains("+ backend web-03 (added to the load balancers once it is ready)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ replica web-03 seeded from the primary"),
        "{stdout}"
    );
    assert!(stdout.contains("order:"), "{stdout}");

    let (out, ok, failed) = under_load(|| cli(&["apply", g]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(ok > 20, "the load loop ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(cli(&["diff", g]).status.code(), Some(0));
    assert_eq!(backends(), ["web-01", "web-02", "web-03"]);
    assert!(wait_until(Duration::from_secs(15), || {
        (0..6).all(|_| {
            http_get(lb(), "/health")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
    }));
    let mut count = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let r = http_get(lb(), "/health").unwrap();
        *count
            .entry(r.header("X-Served-By").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        count.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "spread evenly: {count:?}"
    );

    // The new replica holds the primary's rows, replicates new ones, refuses app writes.
    let rows = || sql("web-03", "SELECT COUNT(*) FROM foobar.items");
    assert!(wait_until(Duration::from_secs(5), || rows()
        == sql("web-01", "SELECT COUNT(*) FROM foobar.items")));
    assert_eq!(
        http_post(&web3(), "/items", "text=through+web-03")
            .unwrap()
            .status,
        201
    );
    assert!(wait_until(Duration::from_secs(5), || rows()
        == sql("web-01", "SELECT COUNT(*) FROM foobar.items")));
    let pw = &lab_secrets()[0];
    let refused = std::process::Command::new("docker")
        .args([
            "exec",
            "-e",
            &format!("MYSQL_PWD={pw}"),
            &container("web-03"),
            "mariadb",
            "-u",
            "foobar",
            "-h",
            &web3(),
        ])
        .args([
            "-e",
            "INSERT INTO foobar.items (text, host) VALUES ('x', 'test')",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // web-02 leaves the web role (it stays a replica).
    let cnf = remote_sha("web-02", "/etc/mysql/mariadb.conf.d/60-foobar.cnf");
    let shrink = lab_variant("shrink", |t| {
        with_web3(t).replacen("roles: [web, db-replica]", "roles: [db-replica]", 1)
    });
    let s = shrink.to_str().unwrap();
    let diff = cli(&["diff", s]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(stdout.starts_with("== topology"), "{stdout}");
    assert!(
        stdout.contains("- backend web-02 (drained first, then removed)"),
        "{stdout}"
    );
    let (out, ok, failed) = under_load(|| cli(&["apply", s]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(ok > 20);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(backends(), ["web-01", "web-03"]);
    assert_eq!(
        remote_sha("web-02", "/etc/mysql/mariadb.conf.d/60-foobar.cnf"),
        cnf,
        "the database side of web-02 unchanged"
    );
    assert!(exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"])
        .contains("Slave_SQL_Running: Yes"));
    assert_eq!(cli(&["diff", s]).status.code(), Some(0));

    // Back to the lab's shape; web-03 goes away.
    let out = cli(&["apply", &base]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(backends(), ["web-01", "web-02"]);
    assert!(sh(&root().join("lab/down"), &["web-03"]).status.success());
}

fn a_host_removed_from_the_inventory_is_pruned_only_when_named() {
    lab();
    let base = lab_inventory().display().to_string();
    // The inventory file as applied with web-02 in it, then edited to leave it out.
    let with = lab_variant("without-web-02", |t| t.to_string());
    apply_ok(with.to_str().unwrap(), &[]);
    let without = lab_variant("without-web-02", |t| {
        t.replace(
            "  web-02:\n    address: 10.231.1.12\n    roles: [web, db-replica]\n",
            "",
        )
    });
    let v = without.to_str().unwrap();
    let refused = cli(&["diff", v, "--prune-host", "web-01"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("web-01 is in the inventory"));

    // The address comes from this controller's record of its last apply of this
    // inventory (never from the hosts' history: issue 20, finding 5).
    let diff = cli(&["diff", v, "--prune-host", "web-02"]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(shown.starts_with("== topology"), "{shown}");
    assert!(
        shown.contains("- host web-02 leaves (--prune-host)"),
        "{shown}"
    );
    assert!(shown.contains("- backend web-02 (drained first"), "{shown}");
    assert!(
        shown.contains("delete /etc/nginx/sites-foobar/www.foobar.com.conf"),
        "{shown}"
    );
    assert!(shown.contains("- replica web-02 leaves"), "{shown}");

    exec(
        "web-02",
        &["sh", "-c", "echo mine > /etc/foobar/placed-by-hand"],
    );
    let load = std::thread::spawn(|| load_loop("/health", Duration::from_secs(20), 3000));
    // No terminal here: the recorded address is confirmed with --yes.
    let unconfirmed = cli(&["apply", v, "--prune-host", "web-02"]);
    assert_eq!(unconfirmed.status.code(), Some(1), "{}", text(&unconfirmed));
    assert!(
        String::from_utf8_lossy(&unconfirmed.stderr).contains(&addr("web-02 at 10.231.1.12")),
        "{}",
        text(&unconfirmed)
    );
    apply_ok(v, &["--prune-host", "web-02", "--yes"]);
    let (ok, failed) = load.join().unwrap();
    eprintln!(
        "prune web-02 under load: {ok} answered, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "no failed request: {failed:?}");
    let cfg = exec("lb-01", &["cat", "/etc/haproxy/haproxy.cfg"]);
    assert!(!cfg.contains("server web-02"), "web-02 left the pool");
    assert_eq!(
        remote_sha("web-02", "/etc/nginx/sites-foobar/www.foobar.com.conf"),
        ""
    );
    assert!(!exec_raw("web-02", &["service", "nginx", "status"])
        .status
        .success());
    assert_eq!(
        exec("web-02", &["cat", "/etc/foobar/placed-by-hand"]).trim(),
        "mine"
    );
    // It was a replica: replication was reset before its database server stopped.
    assert!(
        !exec_raw("web-02", &["test", "-e", "/var/lib/mysql/master.info"])
            .status
            .success(),
        "replication forgotten on web-02"
    );
    let again = cli(&["diff", v, "--prune-host", &addr("web-02=10.231.1.12")]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // Back in the inventory: a full web server and a replica (seeded again).
    apply_ok(&base, &[]);
    let status = exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    assert!(status.contains("Slave_SQL_Running: Yes"), "{status}");
    assert!(wait_until(Duration::from_secs(20), || {
        let mut seen: Vec<String> = served_by(10);
        seen.sort();
        seen.dedup();
        seen == ["web-01", "web-02"]
    }));
}
