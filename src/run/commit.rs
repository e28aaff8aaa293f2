//! The commit phase: swapping a host's staged files in and reloading or restarting
//! its services (each confirmed by its check), and the load balancers held back
//! until new web servers are ready.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::firewall::{confirm_firewall, loads_firewall};
use super::info::RunInfo;
use super::parallel::bounded;
use super::report::{host_error, report, HostReport};
use super::rollback::rollback;
use super::Work;
use crate::diff::{FileChangeKind, HostChanges};
use crate::output::Printer;
use crate::plan::{HostPlan, Service, ServiceAction};
use crate::remote::agent;
use crate::remote::Remote;
use crate::render::paths;

pub(super) fn actions(hp: &HostPlan, hc: &HostChanges) -> Vec<Value> {
    hc.services
        .iter()
        .map(|s| {
            let check =
                (s.action != ServiceAction::Stop).then(|| crate::services::check(s.service));
            let mut a =
                json!({"service": s.service.unit(), "action": s.action.as_str(), "check": check});
            if let (Service::Firewall, Some(secs)) = (s.service, hp.firewall_guard_s) {
                if s.action != ServiceAction::Stop {
                    a["guard"] = json!({"path": paths::FIREWALL, "seconds": secs});
                }
            }
            a
        })
        .collect()
}

pub(crate) fn commit_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Value {
    let staged: Vec<&str> = hc
        .files
        .iter()
        .filter(|f| f.kind != FileChangeKind::Delete)
        .map(|f| f.path.as_str())
        .collect();
    let deletes: Vec<&str> = hc
        .files
        .iter()
        .filter(|f| f.kind == FileChangeKind::Delete)
        .map(|f| f.path.as_str())
        .collect();
    json!({
        "op": "commit", "run_id": run.run_id, "files": staged, "deletes": deletes,
        "actions": actions(hp, hc), "manifest": hc.manifest, "history": run.history(hc),
        "boot": hc.boot.iter().map(|b| b.request()).collect::<Vec<_>>(),
    })
}

/// Commits a host's staged files; `skip_app` leaves the application's restart to the
/// release switch that follows.
pub(super) async fn commit_host(
    hp: &HostPlan,
    hc: &HostChanges,
    r: &dyn Remote,
    run: &RunInfo,
    skip_app: bool,
) -> (Result<Value>, Duration) {
    let t0 = Instant::now();
    let mut req = commit_request(hp, hc, run);
    if skip_app {
        if let Some(actions) = req["actions"].as_array_mut() {
            actions.retain(|a| a["service"] != Service::App.unit());
        }
    }
    let mut res = agent::call(r, "commit", req).await;
    if res.is_ok() && loads_firewall(hp, hc) {
        // On failure the host is already restored: it must not count as committed.
        if let Err(e) = confirm_firewall(hp, hc, r, run).await {
            res = Err(e);
        }
    }
    (res, t0.elapsed())
}

/// Commits the load balancers held back until new web servers were ready.
pub(super) async fn commit_deferred(
    deferred: &[Work<'_>],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let results = bounded(deferred.to_vec(), parallel, |(hp, hc, r)| {
        commit_host(hp, hc, r, run, false)
    })
    .await;
    let mut reports = Vec::new();
    let mut committed = Vec::new();
    let mut failure = None;
    for ((hp, hc, r), (res, took)) in deferred.iter().copied().zip(results) {
        match res {
            Ok(_) => {
                committed.push((hp, hc, r));
                reports.push(report(hp, hc, took, "applied", printer));
            }
            Err(e) => {
                failure.get_or_insert(host_error(
                    hp.name(),
                    "reloading with the new web servers",
                    &e,
                ));
            }
        }
    }
    if let Some(msg) = failure {
        let rolled = rollback(&committed, run, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok(reports)
}
