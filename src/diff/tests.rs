//! Unit tests of diffing (src/diff.rs): diffs against /dev/null, backends and topology, the servers in service.

use super::*;
use crate::remote::agent::HostState;

#[test]
fn a_created_or_deleted_file_is_diffed_against_dev_null_alone() {
    let created = unified("", "x\n", "/etc/nginx/nginx.conf", NO_FILE, "b");
    assert!(
        created.starts_with("--- /dev/null\n+++ b/etc/nginx/nginx.conf\n"),
        "{created}"
    );
    let deleted = unified("x\n", "", "/etc/nginx/nginx.conf", "a", NO_FILE);
    assert!(
        deleted.starts_with("--- a/etc/nginx/nginx.conf\n+++ /dev/null\n"),
        "{deleted}"
    );
}

/// A load balancer that has applied before, HAProxy serving these web servers.
fn balancer_serving(servers: &[&str]) -> HostState {
    serde_json::from_value(serde_json::json!({
        "init": "sysv",
        "hostname": "lb-01",
        "files": {},
        "last_history": {"id": "earlier"},
        "haproxy": servers
            .iter()
            .map(|s| serde_json::json!({"backend": "web", "server": s}))
            .collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[test]
fn backends_leave_and_join_by_the_inventory_not_by_the_hosts_of_the_run() {
    let mut plan = crate::render::lab_plan();
    plan.hosts.retain(|h| h.name() == "lb-01"); // --limit lb
    let observed = BTreeMap::from([("lb-01".to_string(), balancer_serving(&["web-01", "web-02"]))]);
    assert_eq!(topology(&plan, &observed, &[]), Topology::default());

    // A server HAProxy has that the inventory dropped leaves; one it lacks joins.
    let observed = BTreeMap::from([("lb-01".to_string(), balancer_serving(&["web-01", "web-03"]))]);
    let t = topology(&plan, &observed, &[]);
    assert_eq!(t.backends_removed, ["web-03"]);
    assert_eq!(t.backends_added, ["web-02"]);
}

#[test]
fn a_replica_whose_server_was_down_is_part_of_the_topology() {
    let plan = crate::render::lab_plan();
    let hc: HostChanges = serde_json::from_value(serde_json::json!({
        "host": "web-02", "files": [], "services": [], "install": [],
        "db": {"action": "check-replica", "from": "web-01"},
        "create_users": [], "release": null, "record_manifest": false, "boot": [],
    }))
    .unwrap();
    let t = topology(&plan, &BTreeMap::new(), &[hc]);
    assert_eq!(t.replicas_checked, ["web-02"]);
    assert!(!t.is_empty(), "the diff prints a topology section");
    assert!(t
        .order()
        .iter()
        .any(|s| s.contains("once the database server of web-02 runs")));
}

#[test]
fn only_servers_up_at_a_balancer_count_as_in_service() {
    let plan = crate::render::lab_plan();
    let mut lb = balancer_serving(&["web-01", "web-02"]);
    lb.haproxy = serde_json::from_value(serde_json::json!([
        {"backend": "web", "server": "web-01", "status": "UP"},
        {"backend": "web", "server": "web-02", "status": "DOWN"},
        {"backend": "stats", "server": "web-03", "status": "UP"},
    ]))
    .unwrap();
    let observed = BTreeMap::from([("lb-01".to_string(), lb)]);
    assert_eq!(in_service(&plan, &observed), ["web-01"]);
    // A fresh balancer (the distribution's HAProxy, no `web` backend): nobody.
    let mut fresh = balancer_serving(&[]);
    fresh.haproxy = serde_json::from_value(serde_json::json!([])).unwrap();
    let observed = BTreeMap::from([("lb-01".to_string(), fresh)]);
    assert!(in_service(&plan, &observed).is_empty());
}
