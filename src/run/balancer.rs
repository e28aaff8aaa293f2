//! The load balancers' view of the web servers: draining a server from the `web`
//! backend of every load balancer and putting it back.

use anyhow::Result;
use serde_json::json;

use super::report::host_error;
use super::Run;
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::remote::agent;
use crate::remote::Remote;

/// Every load balancer of the inventory, with its connection.
pub fn balancers<'a>(
    plan: &'a Plan,
    remotes: &[&'a dyn Remote],
) -> Vec<(&'a HostPlan, &'a dyn Remote)> {
    // Those outside --limit too: their remotes follow the plan's hosts'.
    (plan.hosts.iter().chain(&plan.outside_balancers))
        .zip(remotes.iter().copied())
        .filter(|(hp, _)| hp.host.has(Role::Lb))
        .collect()
}

/// Drains the web servers that leave the load balancers, at every one, waiting for
/// their sessions to end: before anything else changes.
pub(super) async fn drain_leaving(run: &Run<'_>) -> Result<()> {
    let leaving = &run.changes.topology.backends_removed;
    if leaving.is_empty() {
        return Ok(());
    }
    let lbs = balancers(run.plan, run.remotes);
    for server in leaving {
        set_backend_state(&lbs, server, "drain", true, run.printer).await?;
    }
    Ok(())
}

/// Sets a web server's state in the `web` backend of every load balancer; with `wait`,
/// until its sessions ended (drain) or its health check passes (ready), bounded.
pub(crate) async fn set_backend_state(
    lbs: &[(&HostPlan, &dyn Remote)],
    server: &str,
    state: &str,
    wait: bool,
    printer: &Printer,
) -> Result<()> {
    let timeout_s = if wait { 30 } else { 0 };
    for (lb, r) in lbs {
        printer.detail("Balancer", format!("{}: {server} -> {state}", lb.name()));
        let answer = agent::call(
            *r,
            "haproxy-server",
            json!({"op": "haproxy-server", "backend": "web", "server": server, "state": state, "timeout_s": timeout_s}),
        )
        .await
        .map_err(|e| anyhow::anyhow!(host_error(lb.name(), &format!("setting {server} to {state}"), &e)))?;
        if answer["absent"] == true {
            continue;
        }
        if wait && state == "ready" && !answer["status"].as_str().unwrap_or("").starts_with("UP") {
            printer.warn(format!(
                "{}: {server} is {} after 30 s",
                lb.name(),
                answer["status"]
            ));
        }
    }
    Ok(())
}
