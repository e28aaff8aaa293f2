//! End-to-end tests of the host firewall on the lab (issue 6, acceptance 2 and 3):
//! per-role rules, `nft -c` refusing a broken ruleset, and the anti-lockout guard
//! restoring the previous ruleset when a fresh SSH connection fails.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::overrides;

lab_tests!(firewall_per_role_refuses_broken_rules_and_never_locks_out,);

/// The test machine's address on the lab network (Docker's gateway): the admin
/// (written for the default lab, as inventory edits are: lab_variant moves it).
const ADMIN: &str = "10.231.0.1/32";

fn with_firewall(name: &str, admin: &str) -> String {
    let admin = admin.to_string();
    lab_variant(name, move |t| {
        format!("{t}firewall:\n  admin: [{admin}]\n  rollback_after: 20\n")
    })
    .display()
    .to_string()
}

/// A TCP connection from the test machine (bounded by a 2 s timeout).
fn reachable_from_here(addr: &str, port: u16) -> bool {
    let sa: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&sa, Duration::from_secs(2)).is_ok()
}

/// A TCP connection from inside a lab container (bounded by a 3 s timeout).
fn reachable_from(host: &str, addr: &str, port: u16) -> bool {
    let target = format!("/dev/tcp/{addr}/{port}");
    exec_raw(
        host,
        &["timeout", "3", "bash", "-c", "exec 3<>\"$0\"", &target],
    )
    .status
    .success()
}

fn table_present(host: &str) -> bool {
    exec_raw(host, &["nft", "list", "table", "inet", "foobar"])
        .status
        .success()
}

const FW_HASHES: &[&str] = &["lb-01", "web-01", "web-02"];

fn firewall_files() -> Vec<String> {
    FW_HASHES
        .iter()
        .map(|h| remote_sha(h, "/etc/foobar/firewall.nft"))
        .collect()
}

fn firewall_per_role_refuses_broken_rules_and_never_locks_out() {
    lab();
    let base = lab_inventory().display().to_string();
    apply_ok(&base, &[]);

    let fw = with_firewall("firewall", ADMIN);
    let diff = cli(&["diff", &fw]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(String::from_utf8_lossy(&diff.stdout).contains("/etc/foobar/firewall.nft"));
    apply_ok(&fw, &[]);
    for h in FW_HASHES {
        assert!(table_present(h), "{h} has the table inet foobar");
    }

    // Web servers: HTTP from the load balancer only.
    assert!(reachable_from("lb-01", web1(), 80), "web-01:80 from lb-01");
    assert!(reachable_from("lb-01", web2(), 80), "web-02:80 from lb-01");
    assert!(
        !reachable_from_here(web1(), 80),
        "web-01:80 is closed to other hosts"
    );
    assert!(
        !reachable_from("web-02", web1(), 80),
        "web-01:80 is closed to web-02"
    );
    // The site itself, through the load balancer, from anywhere.
    let r = http_get(lb(), "/health").expect("the site answers through the load balancer");
    assert_eq!(r.status, 200);
    // MySQL: from the web/database hosts, not from the load balancer or elsewhere.
    assert!(
        reachable_from("web-02", web1(), 3306),
        "MySQL on web-01 from web-02"
    );
    assert!(
        !reachable_from("lb-01", web1(), 3306),
        "MySQL on web-01 closed to lb-01"
    );
    assert!(
        !reachable_from_here(web1(), 3306),
        "MySQL closed to other hosts"
    );
    // SSH still works (from the admin network): a fresh run is in sync.
    let again = cli(&["diff", &fw]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    // SSH is closed to a host outside the admin network.
    assert!(
        !reachable_from("lb-01", web1(), 22),
        "SSH on web-01 closed to lb-01"
    );

    // A ruleset nft -c rejects: refused at staging, nothing changes anywhere.
    let before = firewall_files();
    let broken = tempfile::tempdir().unwrap();
    overrides::override_template(
        &broken,
        "firewall.nft",
        "ct state invalid drop",
        "ct state invalid dropp",
    );
    let fw_changed = with_firewall("firewall-web-only", "10.231.0.1/32, 10.231.9.0/24");
    let out = cli(&[
        "apply",
        &fw_changed,
        "--templates",
        broken.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nft rejected /etc/foobar/firewall.nft"),
        "{err}"
    );
    assert_eq!(firewall_files(), before, "no firewall file changed");
    assert!(reachable_from("lb-01", web1(), 80) && !reachable_from_here(web1(), 80));

    // A firewall that cuts SSH from the admin: every host restores the previous
    // ruleset on its own, and apply says so.
    let cut = with_firewall("firewall-cut", "10.99.0.0/16");
    let t0 = Instant::now();
    let out = cli(&["apply", &cut]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocks new SSH connections"), "{err}");
    assert!(err.contains("anti-lockout"), "{err}");
    eprintln!("lockout firewall rolled back, apply returned after {took:?}");
    assert_eq!(firewall_files(), before, "the previous files are back");
    let fresh = cli(&["diff", &fw]);
    assert_eq!(
        fresh.status.code(),
        Some(0),
        "SSH works again and the old firewall is live: {}",
        text(&fresh)
    );
    assert!(reachable_from("lb-01", web1(), 80) && !reachable_from_here(web1(), 80));

    // Taking the firewall out of the inventory removes the table and its files.
    apply_ok(&base, &[]);
    for h in FW_HASHES {
        assert!(!table_present(h), "{h}: table removed");
        assert_eq!(
            remote_sha(h, "/etc/foobar/firewall.nft"),
            "",
            "{h}: file removed"
        );
        // ... and what the tool enabled goes with it (issue 19): no init script, no
        // rc?.d link (dangling or not), no unit, no unit link in a .wants directory.
        let left = exec(
            h,
            &[
                "sh",
                "-c",
                "find /etc/init.d /etc/rc?.d /etc/systemd/system -name '*foobar-firewall*' 2>/dev/null; true",
            ],
        );
        assert_eq!(left.trim(), "", "{h} ({}): left behind", host_os(h));
    }
    assert!(reachable_from_here(web1(), 80));
}
