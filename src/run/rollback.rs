//! Undoing a run: dropping the staged files of hosts never committed (abort), and
//! restoring the previous files of hosts already committed (rollback).

use super::commit::actions;
use super::info::RunInfo;
use super::parallel::bounded;
use super::report::host_error;
use crate::diff::HostChanges;
use crate::output::Printer;
use crate::plan::HostPlan;
use crate::protocol;
use crate::protocol::run::{Abort, HistoryRecord, Rollback};
use crate::remote::Remote;

pub(super) async fn abort(
    hosts: &[(&HostPlan, &HostChanges, &dyn Remote)],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) {
    let results = bounded(hosts.to_vec(), parallel, |(_, _, r)| async move {
        let req = Abort {
            run_id: run.run_id.clone(),
        };
        protocol::call(r, &req).await
    })
    .await;
    for ((hp, _, _), res) in hosts.iter().zip(results) {
        match res {
            Ok(_) => printer.status("Unstaged", hp.name()),
            Err(e) => printer.warn(host_error(hp.name(), "removing staged files", &e)),
        }
    }
}

/// The request that undoes a host's commit of this run (`force`: even a file changed
/// since, as the firewall's guard has restored its own).
pub(super) fn rollback_request(
    hp: &HostPlan,
    hc: &HostChanges,
    run: &RunInfo,
    force: bool,
) -> Rollback {
    Rollback {
        run_id: run.run_id.clone(),
        actions: actions(hp, hc),
        history: HistoryRecord {
            result: Some("rolled-back".into()),
            ..run.history(hc)
        },
        force: force.then_some(true),
        lock: None,
    }
}

/// Restores the hosts committed in this run; returns a sentence for the error.
pub(super) async fn rollback(
    hosts: &[(&HostPlan, &HostChanges, &dyn Remote)],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) -> String {
    if hosts.is_empty() {
        return "No other host had been changed.".into();
    }
    let results = bounded(hosts.to_vec(), parallel, |(hp, hc, r)| async move {
        protocol::call(r, &rollback_request(hp, hc, run, false)).await
    })
    .await;
    let mut restored = Vec::new();
    let mut failed = Vec::new();
    for ((hp, _, _), res) in hosts.iter().zip(results) {
        match res {
            Ok(_) => {
                printer.status("Restored", hp.name());
                restored.push(hp.name().to_string());
            }
            Err(e) => failed.push(host_error(hp.name(), "restoring", &e)),
        }
    }
    let mut s = format!("Restored the previous files on {}.", restored.join(", "));
    if !failed.is_empty() {
        s.push_str(&format!(" Could NOT restore: {}", failed.join("; ")));
    }
    s
}
