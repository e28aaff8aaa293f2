//! Unit tests of the run against the fake fleet (src/run/fake.rs): a failure at any
//! phase on one host leaves every host with its previous files, and the ordering rules
//! hold. The lab's plan (lb-01; web-01 the database primary, web-02 its replica) with
//! one planned file of each changed service edited, observed, diffed and applied as
//! `apply` does.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;

use super::fake::{Event, Fleet, Phase};
use super::info::RunInfo;
use super::observe::observe_all;
use super::report::HostReport;
use crate::output::Printer;
use crate::plan::{Plan, Service};
use crate::remote::Remote;
use crate::secrets::Secrets;

/// The lab's plan and a value for every secret it names.
pub(super) fn lab() -> (Plan, Secrets) {
    let plan = crate::render::lab_plan();
    let mut names: Vec<String> = plan
        .hosts
        .iter()
        .flat_map(|h| &h.files)
        .flat_map(|f| crate::secrets::placeholders_in(&f.content))
        .collect();
    for db in plan.hosts.iter().filter_map(|h| h.db.as_ref()) {
        names.extend(db.users.iter().map(|u| u.secret.clone()));
        names.extend(db.primary.iter().map(|p| p.secret.clone()));
    }
    let values: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "s3cret")).collect();
    (plan, Secrets::with(&values))
}

/// Edits the first planned file of `service` on `host` (a comment line added).
pub(super) fn edit(plan: &mut Plan, host: &str, service: Service) {
    let hp = plan.hosts.iter_mut().find(|h| h.name() == host).unwrap();
    let f = hp.files.iter_mut().find(|f| f.service == service);
    let f = f.unwrap_or_else(|| panic!("{host} has no {service} file"));
    f.content.push_str("\n# edited by the test\n");
}

/// A fleet in sync with the lab's plan, and that plan with a change on every host:
/// HAProxy's config on lb-01 (a reload, so with the hosts that go together), nginx's
/// and MariaDB's on each web server (a restart: one host at a time).
fn fleet_and_changed_plan() -> (Arc<Fleet>, Plan, Secrets) {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    edit(&mut plan, "lb-01", Service::Haproxy);
    for web in ["web-01", "web-02"] {
        edit(&mut plan, web, Service::Nginx);
        edit(&mut plan, web, Service::Mariadb);
    }
    (fleet, plan, secrets)
}

/// Observe, diff and apply `plan` on the fleet, as `foobar-infra apply` does.
pub(super) async fn apply(
    plan: &Plan,
    fleet: &Arc<Fleet>,
    secrets: &Secrets,
) -> Result<Vec<HostReport>> {
    let remotes = fleet.remotes(plan);
    let remotes: Vec<&dyn Remote> = remotes.iter().map(|r| r as &dyn Remote).collect();
    let observed = observe_all(plan, &remotes, secrets, 4).await?;
    let changes = crate::diff::diff(plan, &observed, secrets)?;
    let run = RunInfo {
        run_id: "test-run".into(),
        ..RunInfo::none()
    };
    let printer = Printer::plain();
    super::apply(plan, &changes, &remotes, &run, secrets, 4, &printer).await
}

/// Injects a failure at `phase` on `host`, applies, and checks that the run failed
/// naming the host, that every host has its previous files and nothing staged is
/// left; returns the requests the hosts received.
async fn fails_leaving_every_host_as_before(host: &str, phase: Phase) -> Vec<Event> {
    let (fleet, plan, secrets) = fleet_and_changed_plan();
    let before = fleet.files();
    fleet.fail_at(host, phase);
    let err = apply(&plan, &fleet, &secrets).await.unwrap_err();
    assert!(format!("{err:#}").contains(host), "{phase:?}: {err:#}");
    assert_files_equal(&before, &fleet.files(), &format!("{phase:?} at {host}"));
    assert_eq!(fleet.staged(), Vec::<String>::new(), "{phase:?} at {host}");
    fleet.log()
}

pub(super) fn assert_files_equal(
    before: &BTreeMap<String, BTreeMap<String, super::fake::File>>,
    after: &BTreeMap<String, BTreeMap<String, super::fake::File>>,
    what: &str,
) {
    for (host, files) in before {
        for (path, f) in files {
            assert_eq!(Some(f), after[host].get(path), "{what}: {host}:{path}");
        }
        assert_eq!(files.len(), after[host].len(), "{what}: {host}");
    }
}

/// The hosts that received `op`, in order.
pub(super) fn hosts_with(log: &[Event], op: &str) -> Vec<String> {
    let hosts = log.iter().filter(|e| e.op == op);
    hosts.map(|e| e.host.clone()).collect()
}

#[tokio::test]
async fn the_change_applies_everywhere_when_nothing_fails() {
    let (fleet, plan, secrets) = fleet_and_changed_plan();
    let before = fleet.files();
    let reports = apply(&plan, &fleet, &secrets).await.unwrap();
    assert_eq!(reports.len(), 3, "{reports:?}");
    let after = fleet.files();
    for host in ["lb-01", "web-01", "web-02"] {
        assert_ne!(before[host], after[host], "{host} changed");
    }
    // A second run finds everything in sync: the fake keeps what was committed.
    let log = fleet.log().len();
    assert!(apply(&plan, &fleet, &secrets).await.unwrap().is_empty());
    let again = fleet.log()[log..].to_vec();
    assert!(again.iter().all(|e| e.op == "observe"), "{again:?}");
}

#[tokio::test]
async fn a_failure_at_stage_on_one_host_leaves_all_hosts_as_before() {
    let log = fails_leaving_every_host_as_before("web-02", Phase::Stage).await;
    assert!(hosts_with(&log, "commit").is_empty(), "{log:?}");
    // The hosts that had staged are told to drop it.
    assert_eq!(hosts_with(&log, "abort"), ["lb-01", "web-01"]);
}

#[tokio::test]
async fn a_failure_at_validate_on_one_host_leaves_all_hosts_as_before() {
    let log = fails_leaving_every_host_as_before("lb-01", Phase::Validate).await;
    assert!(hosts_with(&log, "commit").is_empty(), "{log:?}");
    assert_eq!(hosts_with(&log, "abort"), ["web-01", "web-02"]);
}

#[tokio::test]
async fn a_failure_at_commit_on_the_last_host_restores_those_committed_before() {
    // web-01, the primary, commits last: lb-01 and web-02 were committed.
    let log = fails_leaving_every_host_as_before("web-01", Phase::Commit).await;
    assert_eq!(hosts_with(&log, "commit"), ["lb-01", "web-02", "web-01"]);
    let mut rolled = hosts_with(&log, "rollback");
    rolled.sort();
    assert_eq!(rolled, ["lb-01", "web-02"]);
}

#[tokio::test]
async fn a_failure_at_reload_restores_the_hosts_committed_and_unstages_the_rest() {
    let log = fails_leaving_every_host_as_before("web-02", Phase::Reload).await;
    assert_eq!(hosts_with(&log, "commit"), ["lb-01", "web-02"]);
    assert_eq!(hosts_with(&log, "rollback"), ["lb-01"]);
    assert_eq!(hosts_with(&log, "abort"), ["web-01"]);
}

#[tokio::test]
async fn a_failure_at_the_health_check_leaves_all_hosts_as_before() {
    // lb-01's HAProxy fails its check after the reload: the web servers, staged and
    // waiting for their turn, are never committed.
    let log = fails_leaving_every_host_as_before("lb-01", Phase::Health).await;
    assert_eq!(hosts_with(&log, "commit"), ["lb-01"]);
    let mut aborted = hosts_with(&log, "abort");
    aborted.sort();
    assert_eq!(aborted, ["web-01", "web-02"]);
}

#[tokio::test]
async fn a_failure_at_any_phase_on_any_host_leaves_all_hosts_as_before() {
    let phases = [
        Phase::Stage,
        Phase::Validate,
        Phase::Commit,
        Phase::Reload,
        Phase::Health,
    ];
    for host in ["lb-01", "web-01", "web-02"] {
        for phase in phases {
            fails_leaving_every_host_as_before(host, phase).await;
        }
    }
}

#[tokio::test]
async fn every_host_stages_and_validates_before_any_commits() {
    let (fleet, plan, secrets) = fleet_and_changed_plan();
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    let last_stage = log.iter().rposition(|e| e.op == "stage").unwrap();
    let first_commit = log.iter().position(|e| e.op == "commit").unwrap();
    assert_eq!(hosts_with(&log, "stage").len(), 3);
    assert!(last_stage < first_commit, "{log:?}");
}

#[tokio::test]
async fn database_replicas_restart_before_the_primary() {
    let (fleet, plan, secrets) = fleet_and_changed_plan();
    apply(&plan, &fleet, &secrets).await.unwrap();
    let commits = hosts_with(&fleet.log(), "commit");
    let at = |h: &str| commits.iter().position(|c| c == h).unwrap();
    assert!(at("web-02") < at("web-01"), "replica first: {commits:?}");
}

/// The lab's plan with a second load balancer, lb-02 (a copy of lb-01).
fn two_balancers(plan: &mut Plan) {
    let mut lb2 = plan.host("lb-01").unwrap().clone();
    lb2.host.name = "lb-02".into();
    lb2.host.address = "10.231.0.12".parse().unwrap();
    plan.hosts.insert(1, lb2);
}

#[tokio::test]
async fn a_load_balancer_that_gains_a_web_server_reloads_last() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    fleet.set_pool("lb-01", &["web-01"]);
    edit(&mut plan, "lb-01", Service::Haproxy);
    edit(&mut plan, "web-02", Service::Nginx);
    apply(&plan, &fleet, &secrets).await.unwrap();
    assert_eq!(hosts_with(&fleet.log(), "commit"), ["web-02", "lb-01"]);
}

#[tokio::test]
async fn a_web_server_that_leaves_is_drained_at_every_load_balancer_before_any_commit() {
    let (mut plan, secrets) = lab();
    two_balancers(&mut plan);
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    for lb in ["lb-01", "lb-02"] {
        fleet.set_pool(lb, &["web-01", "web-02", "web-03"]);
        edit(&mut plan, lb, Service::Haproxy);
    }
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    let first_commit = log.iter().position(|e| e.op == "commit").unwrap();
    let drained: Vec<&str> = log[..first_commit]
        .iter()
        .filter(|e| e.op == "haproxy-server" && e.detail == "web-03 drain")
        .map(|e| e.host.as_str())
        .collect();
    assert_eq!(drained, ["lb-01", "lb-02"], "{log:?}");
}

#[tokio::test]
async fn web_servers_restart_one_at_a_time_drained_at_every_load_balancer() {
    let (mut plan, secrets) = lab();
    two_balancers(&mut plan);
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    for web in ["web-01", "web-02"] {
        edit(&mut plan, web, Service::Mariadb);
    }
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    // Each load balancer's view of each web server, replayed from the log.
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut commits = 0;
    for e in &log {
        if e.op == "haproxy-server" {
            let (server, s) = e.detail.split_once(' ').unwrap();
            state.insert((e.host.clone(), server.to_string()), s.to_string());
        }
        if e.op == "commit" && e.host.starts_with("web-") {
            commits += 1;
            for lb in ["lb-01", "lb-02"] {
                for web in ["web-01", "web-02"] {
                    let s = state.get(&(lb.to_string(), web.to_string()));
                    let want = if *web == e.host { "drain" } else { "ready" };
                    let seen = s.map_or("ready", String::as_str);
                    assert_eq!(seen, want, "{web} at {lb} while {} commits", e.host);
                }
            }
        }
    }
    assert_eq!(commits, 2, "{log:?}");
    // Both are back in the pool at both load balancers.
    assert!(state.values().all(|s| s == "ready"), "{state:?}");
}
