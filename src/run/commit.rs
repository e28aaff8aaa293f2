//! The commit phase: swapping a host's staged files in and reloading or restarting
//! its services (each confirmed by its check), and the load balancers held back
//! until new web servers are ready.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::balancer::drain_leaving;
use super::firewall::{confirm_firewall, loads_firewall};
use super::info::RunInfo;
use super::order::CommitOrder;
use super::parallel::bounded;
use super::report::{host_error, report, HostReport};
use super::rollback::{abort, rollback};
use super::rolling::{roll_all, Done};
use super::rotation::Rotation;
use super::{Run, Work};
use crate::diff::{FileChangeKind, HostChanges};
use crate::output::Printer;
use crate::plan::{HostPlan, Service, ServiceAction};
use crate::protocol;
use crate::protocol::run::{Action, Commit, Committed, FirewallGuardSpec};
use crate::remote::Remote;
use crate::render::paths;

pub(super) fn actions(hp: &HostPlan, hc: &HostChanges) -> Vec<Action> {
    hc.services
        .iter()
        .map(|s| {
            let acts = s.action != ServiceAction::Stop;
            let guard = match (s.service, hp.firewall_guard_s) {
                (Service::Firewall, Some(seconds)) if acts => Some(FirewallGuardSpec {
                    path: paths::FIREWALL.to_string(),
                    seconds,
                }),
                _ => None,
            };
            Action {
                service: s.service.unit().to_string(),
                action: s.action,
                check: acts.then(|| crate::services::check(s.service)),
                guard,
            }
        })
        .collect()
}

pub(crate) fn commit_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Commit {
    let paths_where = |delete: bool| -> Vec<String> {
        hc.files
            .iter()
            .filter(|f| (f.kind == FileChangeKind::Delete) == delete)
            .map(|f| f.path.clone())
            .collect()
    };
    Commit {
        run_id: run.run_id.clone(),
        files: paths_where(false),
        deletes: paths_where(true),
        actions: actions(hp, hc),
        manifest: hc.manifest.clone(),
        history: run.history(hc),
        boot: hc.boot.iter().map(|b| b.request()).collect(),
    }
}

/// Commits a host's staged files; `skip_app` leaves the application's restart to the
/// release switch that follows.
pub(super) async fn commit_host(
    hp: &HostPlan,
    hc: &HostChanges,
    r: &dyn Remote,
    run: &RunInfo,
    skip_app: bool,
) -> (Result<Committed>, Duration) {
    let t0 = Instant::now();
    let mut req = commit_request(hp, hc, run);
    if skip_app {
        req.actions.retain(|a| a.service != Service::App.unit());
    }
    let mut res = protocol::call(r, &req).await;
    if res.is_ok() && loads_firewall(hp, hc) {
        // On failure the host is already restored: it must not count as committed.
        if let Err(e) = confirm_firewall(hp, hc, r, run).await {
            res = Err(e);
        }
    }
    (res, t0.elapsed())
}

/// The commit phase, in the order of [`CommitOrder`]: web servers leaving drained
/// first, then the hosts that go together, then the rolling group one host at a time.
/// On a failure the hosts never committed drop their staged files, those committed
/// are restored, and the run fails. Returns the reports and the deferred load
/// balancers (committed at the end of the run).
pub(super) async fn commit_all<'a>(
    run: &Run<'a>,
    staged: &[Work<'a>],
    order: CommitOrder<'a>,
    rotation: Option<&Rotation<'_>>,
) -> Result<(Vec<HostReport>, Vec<Work<'a>>)> {
    let Run {
        info,
        parallel,
        printer,
        ..
    } = *run;
    if let Err(e) = drain_leaving(run).await {
        abort(staged, info, parallel, printer).await;
        return Err(e).context("nothing was changed");
    }
    let CommitOrder {
        together,
        rolling,
        deferred,
    } = order;
    let group = commit_group(&together, info, parallel, printer, "applying").await;
    let (mut reports, committed, mut failure) = group;
    let mut done = Done { committed };
    let mut not_reached: &[Work] = &rolling;
    if failure.is_none() {
        if let Err((msg, rest)) = roll_all(run, &rolling, rotation, &mut done, &mut reports).await {
            failure = Some(msg);
            not_reached = rest;
        }
    }
    if let Some(msg) = failure {
        // Hosts staged but never committed: drop their staged files.
        let staged_only: Vec<Work> = not_reached.iter().chain(&deferred).copied().collect();
        abort(&staged_only, info, parallel, printer).await;
        printer.event(json!({"event": "error", "message": msg}));
        let rolled = rollback(&done.committed, info, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok((reports, deferred))
}

/// Commits `hosts` together (`--parallel` at a time): the reports and the hosts of
/// those committed, and the first failure (`what` failed).
async fn commit_group<'a>(
    hosts: &[Work<'a>],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
    what: &str,
) -> (Vec<HostReport>, Vec<Work<'a>>, Option<String>) {
    let results = bounded(hosts.to_vec(), parallel, |(hp, hc, r)| {
        commit_host(hp, hc, r, run, false)
    })
    .await;
    let mut reports = Vec::new();
    let mut committed = Vec::new();
    let mut failure = None;
    for ((hp, hc, r), (res, took)) in hosts.iter().copied().zip(results) {
        match res {
            Ok(_) => {
                committed.push((hp, hc, r));
                reports.push(report(hp, hc, took, "applied", printer));
            }
            Err(e) => {
                failure.get_or_insert(host_error(hp.name(), what, &e));
            }
        }
    }
    (reports, committed, failure)
}

/// Commits the load balancers held back until new web servers were ready.
pub(super) async fn commit_deferred(
    deferred: &[Work<'_>],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let what = "reloading with the new web servers";
    let (reports, committed, failure) = commit_group(deferred, run, parallel, printer, what).await;
    if let Some(msg) = failure {
        let rolled = rollback(&committed, run, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok(reports)
}
