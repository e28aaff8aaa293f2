//! A new firewall: after it is loaded, a fresh SSH login must confirm it before the
//! host's anti-lockout guard restores the previous ruleset.

use std::time::{Duration, Instant};

use super::info::RunInfo;
use super::rollback::rollback_request;
use crate::diff::HostChanges;
use crate::plan::{HostPlan, Service, ServiceAction};
use crate::protocol;
use crate::protocol::run::{FirewallConfirm, FirewallGuard};
use crate::remote::Remote;
use anyhow::{bail, Result};

/// Whether committing this host loads a new firewall (and so needs the fresh-login test).
pub(super) fn loads_firewall(hp: &HostPlan, hc: &HostChanges) -> bool {
    hp.firewall_guard_s.is_some()
        && hc
            .services
            .iter()
            .any(|s| s.service == Service::Firewall && s.action != ServiceAction::Stop)
}

/// After a new firewall is loaded: a fresh SSH connection (not the multiplexed one)
/// must log in and cancel the host's anti-lockout guard. If it cannot, the guard
/// restores the previous ruleset on its own; this waits (bounded) until it has, then
/// restores the host's other files of this run, and fails naming the host.
pub(super) async fn confirm_firewall(
    hp: &HostPlan,
    hc: &HostChanges,
    r: &dyn Remote,
    run: &RunInfo,
) -> Result<()> {
    let secs = hp.firewall_guard_s.unwrap_or(30);
    let req = FirewallConfirm {
        run_id: run.run_id.clone(),
    };
    let fresh_error = match protocol::call_fresh(r, &req).await {
        Ok(v) if v.confirmed == Some(true) => return Ok(()),
        Ok(v) if v.fired => {
            "the anti-lockout guard fired before a fresh connection confirmed it".to_string()
        }
        Ok(v) => format!(
            "the anti-lockout guard was not armed ({})",
            serde_json::to_string(&v).unwrap_or_default()
        ),
        Err(e) => format!("{e:#}"),
    };
    // Wait for the guard over the connection that is still open (established
    // connections stay allowed), a little longer than its deadline.
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    let fired = loop {
        let req = FirewallGuard {
            run_id: run.run_id.clone(),
        };
        match protocol::call(r, &req).await {
            Ok(v) if v.fired => break Some(v),
            Ok(_) | Err(_) if Instant::now() >= deadline => break None,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let restored = protocol::call(r, &rollback_request(hp, hc, run, true)).await;
    let what = match (&fired, &restored) {
        (Some(_), Ok(_)) => format!(
            "the host restored its previous firewall on its own after {secs} s (anti-lockout), and the run's other files there were restored"
        ),
        (Some(_), Err(e)) => format!(
            "the host restored its previous firewall on its own after {secs} s (anti-lockout), but restoring its other files failed: {e:#}"
        ),
        (None, _) => format!(
            "the anti-lockout guard did not report within {} s: check the host's console",
            secs + 15
        ),
    };
    bail!(
        "{}: the new firewall blocks new SSH connections ({fresh_error}); {what}",
        hp.name()
    )
}
