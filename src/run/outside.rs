//! The load balancers a `--limit` leaves out of a run: a web server of the run is still
//! drained and put back at every load balancer of the inventory, so these are connected
//! (never observed for changes, never changed) and their remotes follow the plan's.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::diff;
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::remote::ssh::SshRemote;
use crate::run::{connect, observe};
use crate::secrets::Secrets;

/// The load balancers of the full plan that `limited` leaves out, when `limited` has a
/// web server (nothing to drain otherwise).
pub fn left_out(full: &Plan, limited: &Plan) -> Vec<HostPlan> {
    if !limited.hosts.iter().any(|h| h.host.has(Role::Web)) {
        return Vec::new();
    }
    full.hosts
        .iter()
        .filter(|h| h.host.has(Role::Lb) && limited.host(h.name()).is_none())
        // Only the host: nothing of it is compared or changed (nor needs a secret).
        .map(|h| HostPlan::bare(h.host.clone()))
        .collect()
}

/// Connects to `lbs` and reads which web servers each has UP. Returns the connections
/// (in the order of `lbs`) and those servers; fails (closing them) naming each host.
pub async fn connect(
    lbs: &[HostPlan],
    domain: &str,
    secrets: &Secrets,
    parallel: usize,
    persist: Option<u64>,
    printer: &Arc<Printer>,
) -> Result<(Vec<SshRemote>, Vec<String>)> {
    let names: Vec<&str> = lbs.iter().map(HostPlan::name).collect();
    printer.status(
        "Connecting",
        format!("{} (load balancers outside --limit)", names.join(", ")),
    );
    let plan = Plan {
        domain: domain.to_string(),
        hosts: lbs.to_vec(),
        backends: Vec::new(),
        outside_balancers: Vec::new(),
        canary: None,
    };
    let remotes = connect::connect_all(&plan, parallel, persist, printer)
        .await
        .context("connecting to the load balancers outside --limit (to drain web servers)")?;
    let mut observed = BTreeMap::new();
    for (hp, r) in lbs.iter().zip(&remotes) {
        match observe::observe_one(hp, r, secrets).await {
            Ok(st) => {
                observed.insert(hp.name().to_string(), st);
            }
            Err(e) => {
                connect::close_all(remotes).await;
                return Err(e).with_context(|| format!("{}: reading its web servers", hp.name()));
            }
        }
    }
    let up = diff::in_service(&plan, &observed);
    Ok((remotes, up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_to_a_web_server_leaves_out_the_load_balancers_bare() {
        let full = crate::render::lab_plan();
        let limited = crate::commands::remote::limit(full.clone(), &["web-01".into()]).unwrap();
        let out = left_out(&full, &limited);
        let names: Vec<&str> = out.iter().map(HostPlan::name).collect();
        assert_eq!(names, ["lb-01"]);
        assert!(out[0].files.is_empty() && out[0].services.is_empty());
        let lbs = crate::commands::remote::limit(full.clone(), &["lb".into()]).unwrap();
        assert!(
            left_out(&full, &lbs).is_empty(),
            "no web server: nothing to drain"
        );
        assert!(left_out(&full, &full).is_empty());
    }
}
