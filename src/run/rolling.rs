//! The rolling group of the commit phase: hosts whose application or database
//! restarts, one at a time, each drained on every load balancer while it does.

use anyhow::Result;
use serde_json::json;

use super::balancer::set_backend_state;
use super::commit::commit_host;
use super::info::RunInfo;
use super::report::host_error;
use super::rotation::{rotate_accounts_of, Rotation};
use super::Work;
use crate::diff::HostChanges;
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{HostPlan, Service, ServiceAction};
use crate::remote::agent;
use crate::remote::Remote;

/// What a run has changed so far, to undo on failure.
#[derive(Default)]
pub(super) struct Done<'a> {
    pub(super) committed: Vec<Work<'a>>,
}

/// What every host of the rolling group shares.
pub(super) struct Step<'s> {
    pub(super) lbs: &'s [(&'s HostPlan, &'s dyn Remote)],
    pub(super) run: &'s RunInfo,
    pub(super) rotation: Option<&'s Rotation<'s>>,
    /// Wait (bounded) until the load balancers see the host UP again.
    pub(super) wait_ready: bool,
    pub(super) printer: &'s Printer,
}

/// One host of the rolling group: drained on every load balancer, committed, switched
/// to its new release, checked, and put back into the pool.
pub(super) async fn roll_host<'a>(
    hp: &'a HostPlan,
    hc: &'a HostChanges,
    r: &'a dyn Remote,
    step: &Step<'_>,
    done: &mut Done<'a>,
) -> Result<()> {
    let Step {
        lbs,
        run,
        rotation,
        wait_ready,
        printer,
    } = *step;
    let web = hp.host.has(Role::Web);
    if web {
        set_backend_state(lbs, hp.name(), "drain", true, printer).await?;
    }
    let result = async {
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
            res.map_err(|e| anyhow::anyhow!(host_error(hp.name(), "applying", &e)))?;
            done.committed.push((hp, hc, r));
        }
        if hp
            .db
            .as_ref()
            .is_some_and(|d| d.role == crate::plan::DbRole::Replica)
            && hc.services.iter().any(|s| s.service.is_database())
            // It replicated when observed (otherwise it is seeded after this phase).
            && hc.db.is_none()
        {
            agent::call(
                r,
                "db-wait-replica",
                json!({"op": "db-wait-replica", "timeout_s": 60}),
            )
            .await
            .map_err(|e| anyhow::anyhow!(host_error(hp.name(), "waiting for replication", &e)))?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if web {
        // Back into the pool whatever happened: on failure its old state was restored.
        // (Not waited for after a failure: the run fails anyway, and a host that stopped
        // answering would only hold the error back.)
        let wait = wait_ready && result.is_ok();
        let back = set_backend_state(lbs, hp.name(), "ready", wait, printer).await;
        result?;
        return back;
    }
    result
}
