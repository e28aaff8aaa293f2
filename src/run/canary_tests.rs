//! Unit tests of the canary stage (src/run/canary_stage.rs) against the fake fleet
//! (src/run/fake.rs), whose load balancers count 10 requests per read of their
//! counters to each server UP, 2 of them failed on a server whose files hold the bad
//! config: the canary's files (and release) go first and are watched, the others' wait
//! staged; a failed canary leaves every host as before and the others never touched;
//! a canary covering every changing server is refused (`--canary N`) or skipped.

use std::time::Duration;

use super::canary::Canary;
use super::canary_stage::{decide, Decision};
use super::fake::Fleet;
use super::tests::{apply, assert_files_equal, edit, hosts_with, lab};
use crate::inventory::rollout::Rollout;
use crate::plan::{Plan, Service};

/// What the test's edit adds to a file: the "bad config" when the fleet is told so.
const EDIT: &str = "# edited by the test";

fn with_canary(plan: &mut Plan, n: usize, explicit: bool) {
    plan.canary = Some(Canary {
        limits: Rollout {
            canary: n,
            watch: Duration::from_millis(30),
            ..Rollout::default()
        },
        record: None,
        explicit,
    });
}

/// A new release for both web servers (a new id: uploaded, then switched).
fn new_release(plan: &mut Plan) {
    for hp in plan
        .hosts
        .iter_mut()
        .filter(|h| h.name().starts_with("web-"))
    {
        hp.release.as_mut().expect("a web server's release").id = "c0ffee42".into();
    }
}

/// The position of the first request `op` to `host` in the log.
fn at(log: &[super::fake::Event], host: &str, op: &str) -> usize {
    log.iter()
        .position(|e| e.host == host && e.op == op)
        .unwrap_or_else(|| panic!("{host} got no {op}: {log:?}"))
}

#[tokio::test]
async fn a_config_change_reaches_the_canary_first_and_the_others_after_its_verdict() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    edit(&mut plan, "web-01", Service::Nginx);
    edit(&mut plan, "web-02", Service::Nginx);
    with_canary(&mut plan, 1, false);
    let before = fleet.files();
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    // Both staged before any commit (all or nothing), web-01 first, watched, then web-02.
    assert!(log.iter().rposition(|e| e.op == "stage").unwrap() < at(&log, "web-01", "commit"));
    assert_eq!(hosts_with(&log, "commit"), ["web-01", "web-02"]);
    let watched = at(&log, "lb-01", "haproxy-counters");
    assert!(at(&log, "web-01", "commit") < watched, "{log:?}");
    assert!(watched < at(&log, "web-02", "commit"), "{log:?}");
    let after = fleet.files();
    assert_ne!(before["web-01"], after["web-01"]);
    assert_ne!(before["web-02"], after["web-02"]);
}

#[tokio::test]
async fn a_failed_config_canary_restores_its_files_and_never_touches_the_others() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    edit(&mut plan, "web-01", Service::Nginx);
    edit(&mut plan, "web-02", Service::Nginx);
    with_canary(&mut plan, 1, false);
    fleet.fail_requests_with(EDIT);
    let before = fleet.files();
    let err = apply(&plan, &fleet, &secrets).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("canary failed: error rate 20.0%"), "{msg}");
    assert!(msg.contains("web-01: 10 requests, 2 failed"), "{msg}");
    assert!(
        msg.contains("Restored the previous files on web-01"),
        "{msg}"
    );
    assert!(msg.contains("web-02 never changed"), "{msg}");
    assert_files_equal(&before, &fleet.files(), "after the failed canary");
    assert_eq!(fleet.staged(), Vec::<String>::new());
    let log = fleet.log();
    assert_eq!(
        hosts_with(&log, "commit"),
        ["web-01"],
        "web-02 never committed"
    );
    assert_eq!(hosts_with(&log, "rollback"), ["web-01"]);
    assert_eq!(hosts_with(&log, "abort"), ["web-02"]);
    // Restored drained, then back into the pool.
    let web01: Vec<&str> = (log.iter())
        .filter(|e| e.op == "haproxy-server" && e.detail.starts_with("web-01 "))
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(web01, ["web-01 drain", "web-01 ready"], "{log:?}");
    assert!(at(&log, "lb-01", "haproxy-server") < at(&log, "web-01", "rollback"));
}

#[tokio::test]
async fn a_failed_canary_restores_both_its_release_and_its_files() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    let old = fleet.releases();
    edit(&mut plan, "web-01", Service::Nginx);
    edit(&mut plan, "web-02", Service::Nginx);
    new_release(&mut plan);
    with_canary(&mut plan, 1, false);
    fleet.fail_requests_with(EDIT);
    let before = fleet.files();
    let err = apply(&plan, &fleet, &secrets).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("deploying release c0ffee42 and files (nginx)"),
        "{msg}"
    );
    assert!(msg.contains("web-02 never switched"), "{msg}");
    let log = fleet.log();
    // The canary had both before the watch.
    let watched = at(&log, "lb-01", "haproxy-counters");
    assert!(
        at(&log, "web-01", "commit") < watched && at(&log, "web-01", "release-switch") < watched
    );
    let switches: Vec<(String, String)> = (log.iter())
        .filter(|e| e.op == "release-switch")
        .map(|e| (e.host.clone(), e.detail.clone()))
        .collect();
    let back = old["web-01"].clone().unwrap();
    assert_eq!(
        switches,
        [
            ("web-01".into(), "c0ffee42".into()),
            ("web-01".into(), back)
        ],
        "web-02 never switched"
    );
    assert_eq!(fleet.releases(), old);
    assert_files_equal(&before, &fleet.files(), "after the failed canary");
    assert_eq!(hosts_with(&log, "commit"), ["web-01"]);
}

#[tokio::test]
async fn a_canary_covering_every_changing_server_is_refused_from_the_command_line() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    edit(&mut plan, "web-01", Service::Nginx);
    edit(&mut plan, "web-02", Service::Nginx);
    with_canary(&mut plan, 2, true);
    let err = apply(&plan, &fleet, &secrets).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("--canary 2 covers every web server that changes in this run (2 of them: web-01, web-02)"),
        "{msg}"
    );
    assert!(
        msg.ends_with("pass --canary 1 or fewer, or --no-canary"),
        "{msg}"
    );
    assert_eq!(
        crate::error::kind_of(&err).0,
        crate::error::ErrorKind::Usage
    );
    // Before any change: nothing staged, let alone committed.
    let log = fleet.log();
    assert!(log.iter().all(|e| e.op == "observe"), "{log:?}");
}

#[tokio::test]
async fn the_inventorys_canary_covering_every_changing_server_is_skipped_saying_why() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    // One web server changes (as with --limit web-01).
    edit(&mut plan, "web-01", Service::Nginx);
    with_canary(&mut plan, 1, false);
    let observed = {
        let remotes = fleet.remotes(&plan);
        let remotes: Vec<&dyn crate::remote::Remote> = remotes
            .iter()
            .map(|r| r as &dyn crate::remote::Remote)
            .collect();
        super::observe::observe_all(&plan, &remotes, &secrets, 4)
            .await
            .unwrap()
    };
    let changes = crate::diff::diff(&plan, &observed, &secrets).unwrap();
    match decide(&plan, &changes, false) {
        Decision::Skip(msg) => assert_eq!(
            msg,
            "the canary stage is skipped: rollout.canary 1 covers every web server that changes \
             in this run (1 of them: web-01): none would stay on the old version to compare with"
        ),
        other => panic!("{other:?}"),
    }
    // The same from the command line is refused, naming the fix.
    with_canary(&mut plan, 1, true);
    let Decision::Refuse(msg) = decide(&plan, &changes, false) else {
        panic!("refused")
    };
    assert!(msg.ends_with("pass --no-canary (a canary needs at least 2 changing web servers)"));
    // Skipped, the run goes on as without a canary, unwatched.
    with_canary(&mut plan, 1, false);
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    assert_eq!(hosts_with(&log, "commit"), ["web-01"]);
    assert!(hosts_with(&log, "haproxy-counters").is_empty(), "{log:?}");
}

#[tokio::test]
async fn a_database_change_on_the_web_servers_keeps_the_canary_to_the_release() {
    let (mut plan, secrets) = lab();
    let fleet = Fleet::in_sync_with(&plan, &secrets);
    for web in ["web-01", "web-02"] {
        edit(&mut plan, web, Service::Mariadb);
    }
    new_release(&mut plan);
    with_canary(&mut plan, 1, false);
    apply(&plan, &fleet, &secrets).await.unwrap();
    let log = fleet.log();
    // The files first everywhere, replica first; then the canary's release, watched.
    assert_eq!(hosts_with(&log, "commit"), ["web-02", "web-01"]);
    let watched = at(&log, "lb-01", "haproxy-counters");
    assert!(at(&log, "web-02", "commit") < watched);
    let switched = hosts_with(&log, "release-switch");
    assert_eq!(switched, ["web-01", "web-02"]);
    let second = log.iter().rposition(|e| e.op == "release-switch").unwrap();
    assert!(watched < second, "{log:?}");
}
