//! The rolling group of the commit phase: hosts whose application or database
//! restarts, one at a time, each drained on every load balancer while it does.

use std::time::Instant;

use anyhow::Result;

use super::balancer::{balancers, set_backend_state};
use super::commit::commit_host;
use super::database::comes_later;
use super::info::RunInfo;
use super::report::{host_failure, report, HostReport};
use super::rotation::{rotate_accounts_of, Rotation};
use super::{Run, Work};
use crate::diff::HostChanges;
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{DbRole, HostPlan, Service, ServiceAction};
use crate::protocol;
use crate::protocol::database::DbWaitReplica;
use crate::protocol::release::ServerState;
use crate::remote::Remote;

/// What a run has changed so far, to undo on failure.
#[derive(Default)]
pub(super) struct Done<'a> {
    pub(super) committed: Vec<Work<'a>>,
}

/// What every host of the rolling group shares.
struct Step<'s> {
    lbs: &'s [(&'s HostPlan, &'s dyn Remote)],
    run: &'s RunInfo,
    rotation: Option<&'s Rotation<'s>>,
    /// Wait (bounded) until the load balancers see the host UP again.
    wait_ready: bool,
    printer: &'s Printer,
}

/// Rolls the group one host at a time, in its order, recording each host committed
/// in `done`. On a failure: the error, and the hosts not reached (still staged).
pub(super) async fn roll_all<'a, 'w>(
    run: &Run<'a>,
    rolling: &'w [Work<'a>],
    rotation: Option<&Rotation<'_>>,
    done: &mut Done<'a>,
    reports: &mut Vec<HostReport>,
) -> Result<(), (String, &'w [Work<'a>])> {
    let lbs = balancers(run.plan, run.remotes);
    for (i, &(hp, hc, r)) in rolling.iter().enumerate() {
        let t0 = Instant::now();
        // Only a server that was in service is waited for when it goes back: one
        // never in service (first deploy) or seeded as a replica after this phase
        // cannot pass its health check yet (its release or database comes later).
        let wait_ready = run.changes.in_service.iter().any(|s| s == hp.name())
            && !hc.db.as_ref().is_some_and(comes_later);
        let step = Step {
            lbs: &lbs,
            run: run.info,
            rotation,
            wait_ready,
            printer: run.printer,
        };
        match roll_host(hp, hc, r, &step, done).await {
            Ok(()) => reports.push(report(hp, hc, t0.elapsed(), "applied", run.printer)),
            Err(e) => return Err((format!("{e:#}"), &rolling[i + 1..])),
        }
    }
    Ok(())
}

/// One host of the rolling group: drained on every load balancer, committed, switched
/// to its new release, checked, and put back into the pool.
async fn roll_host<'a>(
    hp: &'a HostPlan,
    hc: &'a HostChanges,
    r: &'a dyn Remote,
    step: &Step<'_>,
    done: &mut Done<'a>,
) -> Result<()> {
    let Step {
        lbs,
        wait_ready,
        printer,
        ..
    } = *step;
    let web = hp.host.has(Role::Web);
    if web {
        set_backend_state(lbs, hp.name(), ServerState::Drain, true, printer).await?;
    }
    let result = restart_in_turn((hp, hc, r), step, done).await;
    if web {
        // Back into the pool whatever happened: on failure its old state was restored.
        // (Not waited for after a failure: the run fails anyway, and a host that stopped
        // answering would only hold the error back.)
        let wait = wait_ready && result.is_ok();
        let back = set_backend_state(lbs, hp.name(), ServerState::Ready, wait, printer).await;
        result?;
        return back;
    }
    result
}

/// A drained host's turn: its application's new database password, its commit, and
/// (a replica) replication running again.
async fn restart_in_turn<'a>(host: Work<'a>, step: &Step<'_>, done: &mut Done<'a>) -> Result<()> {
    let (hp, hc, r) = host;
    let Step {
        run,
        rotation,
        printer,
        ..
    } = *step;
    let app_restarts = hc
        .services
        .iter()
        .any(|s| s.service == Service::App && s.action != ServiceAction::Stop);
    if let (Some(rot), true) = (rotation, app_restarts) {
        rotate_accounts_of(hp, r, rot, printer).await?;
    }
    if !hc.files_unchanged() {
        printer.status("Restarting", format!("{} (one host at a time)", hp.name()));
        let (res, _) = commit_host(hp, hc, r, run, hc.release.is_some()).await;
        res.map_err(|e| host_failure(hp.name(), "applying", &e))?;
        done.committed.push((hp, hc, r));
    }
    if hp.db.as_ref().is_some_and(|d| d.role == DbRole::Replica)
        && hc.services.iter().any(|s| s.service.is_database())
        // It replicated when observed (otherwise it is seeded after this phase).
        && hc.db.is_none()
    {
        protocol::call(r, &DbWaitReplica { timeout_s: 60 })
            .await
            .map_err(|e| host_failure(hp.name(), "waiting for replication", &e))?;
    }
    Ok(())
}
