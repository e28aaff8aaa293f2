//! The load balancers' view of the web servers: draining a server from the `web`
//! backend of every load balancer and putting it back.

use anyhow::Result;

use super::report::host_failure;
use super::Run;
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::protocol;
use crate::protocol::release::{HaproxyServer, ServerState};
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
        set_backend_state(&lbs, server, ServerState::Drain, true, run.printer).await?;
    }
    Ok(())
}

/// Sets a web server's state in the `web` backend of every load balancer; with `wait`,
/// until its sessions ended (drain) or its health check passes (ready), bounded.
pub(crate) async fn set_backend_state(
    lbs: &[(&HostPlan, &dyn Remote)],
    server: &str,
    state: ServerState,
    wait: bool,
    printer: &Printer,
) -> Result<()> {
    let timeout_s = if wait { 30 } else { 0 };
    for (lb, r) in lbs {
        printer.detail(
            "Balancer",
            format!("{}: {server} -> {}", lb.name(), state.as_str()),
        );
        let request = HaproxyServer {
            backend: "web".into(),
            server: server.to_string(),
            state,
            timeout_s,
        };
        let answer = protocol::call(*r, &request).await.map_err(|e| {
            host_failure(
                lb.name(),
                &format!("setting {server} to {}", state.as_str()),
                &e,
            )
        })?;
        if answer.absent == Some(true) {
            continue;
        }
        let status = answer.status.unwrap_or_default();
        if wait && state == ServerState::Ready && !status.starts_with("UP") {
            printer.warn(format!(
                "{}: {server} is \"{status}\" after 30 s",
                lb.name()
            ));
        }
        if wait && state == ServerState::Drain && (answer.sessions + answer.old_processes) > 0 {
            printer.warn(format!(
                "{}: {server} still has {} session(s), and {} HAProxy process(es) of an \
                 earlier config still run, after 30 s of draining",
                lb.name(),
                answer.sessions,
                answer.old_processes
            ));
        }
    }
    Ok(())
}
