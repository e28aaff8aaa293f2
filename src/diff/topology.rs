//! The shape of the stack changing, as a diff says it first: new hosts, backends
//! joining or leaving the pool, services stopped, replicas seeded, checked or removed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::HostChanges;
use crate::database::DbChange;
use crate::plan::{Plan, ServiceAction};
use crate::remote::agent::HostState;

/// The shape of the stack changing: said first in a diff, and ordering the apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Topology {
    /// Hosts the tool has never applied to.
    pub new_hosts: Vec<String>,
    /// Web servers the load balancers do not have yet: added once they are ready.
    pub backends_added: Vec<String>,
    /// Web servers leaving the load balancers: drained first.
    pub backends_removed: Vec<String>,
    /// (host, service) pairs whose role left the host.
    pub services_stopped: Vec<(String, String)>,
    /// Replicas to seed from the primary.
    pub replicas_seeded: Vec<String>,
    /// Replicas whose database server was not running when observed (a replica role
    /// just added, or a server down): seeded once it runs, unless it replicates.
    #[serde(default)]
    pub replicas_checked: Vec<String>,
    /// Hosts that stop being replicas.
    #[serde(default)]
    pub replicas_removed: Vec<String>,
    /// Hosts removed from the inventory and named by --prune-host.
    #[serde(default)]
    pub pruned_hosts: Vec<String>,
}

impl Topology {
    pub fn is_empty(&self) -> bool {
        *self == Topology::default()
    }

    /// The order the steps run in, in words.
    pub fn order(&self) -> Vec<String> {
        let mut steps = Vec::new();
        if !self.backends_removed.is_empty() {
            steps.push(format!(
                "drain {} on every load balancer and wait for their sessions to end",
                self.backends_removed.join(", ")
            ));
        }
        if !self.replicas_removed.is_empty() {
            steps.push(format!(
                "stop and reset replication on {}",
                self.replicas_removed.join(", ")
            ));
        }
        steps.push("stage and validate every changed file on every host".into());
        let mut commit = "swap files and reload; restarts one host at a time".to_string();
        if !self.services_stopped.is_empty() {
            let s: Vec<String> = self
                .services_stopped
                .iter()
                .map(|(h, s)| format!("{s} on {h}"))
                .collect();
            commit.push_str(&format!("; stop {}", s.join(", ")));
        }
        steps.push(commit);
        if !self.replicas_seeded.is_empty() {
            steps.push(format!(
                "seed {} from the primary (streamed dump), replicate by GTID",
                self.replicas_seeded.join(", ")
            ));
        }
        if !self.replicas_checked.is_empty() {
            steps.push(format!(
                "once the database server of {} runs: seed it from the primary unless it already replicates",
                self.replicas_checked.join(", ")
            ));
        }
        steps.push("switch web servers to the new release, one at a time".into());
        if !self.backends_added.is_empty() {
            steps.push(format!(
                "only then reload the load balancers with {} in the pool",
                self.backends_added.join(", ")
            ));
        }
        steps
    }
}

/// What changes in the stack's shape, from the plan and what the hosts report.
pub(super) fn topology(
    plan: &Plan,
    observed: &BTreeMap<String, HostState>,
    hosts: &[HostChanges],
) -> Topology {
    use crate::inventory::Role;
    // The inventory's web servers, not only those of this run: `--limit lb` must not
    // read as every backend leaving.
    let planned: Vec<&str> = plan.backends.iter().map(String::as_str).collect();
    let mut t = Topology::default();
    for hp in &plan.hosts {
        let Some(st) = observed.get(hp.name()) else {
            continue;
        };
        if st.manifest.is_empty() && st.last_history.is_none() {
            t.new_hosts.push(hp.name().to_string());
        }
        if !hp.host.has(Role::Lb) {
            continue;
        }
        let Some(view) = st.haproxy.as_ref() else {
            continue;
        };
        let serving: Vec<&str> = view.servers("web").map(|(server, ..)| server).collect();
        if serving.is_empty() {
            continue; // not configured by the tool yet
        }
        for w in &planned {
            if !serving.contains(w) && !t.backends_added.iter().any(|x| x == w) {
                t.backends_added.push(w.to_string());
            }
        }
        for s in serving {
            if !planned.contains(&s) && !t.backends_removed.iter().any(|x| x == s) {
                t.backends_removed.push(s.to_string());
            }
        }
    }
    for hc in hosts {
        for s in hc
            .services
            .iter()
            .filter(|s| s.action == ServiceAction::Stop)
        {
            t.services_stopped
                .push((hc.host.clone(), s.service.unit().to_string()));
        }
        if matches!(hc.db, Some(DbChange::SeedReplica { .. })) {
            t.replicas_seeded.push(hc.host.clone());
        }
        if matches!(hc.db, Some(DbChange::CheckReplica { .. })) {
            t.replicas_checked.push(hc.host.clone());
        }
        if matches!(hc.db, Some(DbChange::RemoveReplica { .. })) {
            t.replicas_removed.push(hc.host.clone());
        }
    }
    t
}
