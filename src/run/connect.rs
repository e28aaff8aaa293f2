//! Connecting to the hosts (the SSH connections a run works over), and observing each
//! as soon as its own connection is up.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tokio::sync::Semaphore;

use super::observe::{observe_checked, Observe};
use super::parallel::bounded;
use super::report::host_error;
use crate::error::{self, HostFailure};
use crate::inventory::Host;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::remote::agent::HostState;
use crate::remote::ssh::{self, SshRemote};
use crate::secrets::Secrets;

/// Connects to every host of the plan; fails (closing the others) naming each host
/// that could not be reached.
pub async fn connect_all(
    plan: &Plan,
    parallel: usize,
    persist: Option<u64>,
    printer: &Arc<Printer>,
) -> Result<Vec<SshRemote>> {
    let hosts: Vec<_> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let results = bounded(hosts, parallel, |h| {
        let p = printer.clone();
        async move { connect_one(&h, p, persist, None).await }
    })
    .await;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (hp, r) in plan.hosts.iter().zip(results) {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(HostFailure::new(hp.name(), format!("{e:#}"), &e)),
        }
    }
    if !errors.is_empty() {
        close_all(ok).await;
        return Err(error::of_hosts(None, &errors));
    }
    Ok(ok)
}

/// Connects to every host and observes each as soon as its own connection is up (no
/// host waits for the slowest connection before its observe starts). Fails, closing
/// every connection, naming each host that could not be reached, else each that could
/// not be observed.
pub async fn connect_and_observe(
    plan: &Plan,
    connecting: Connecting,
    parallel: usize,
    printer: &Arc<Printer>,
    secrets: &Secrets,
    how: Observe,
) -> Result<(Vec<SshRemote>, BTreeMap<String, HostState>)> {
    let mut tasks: BTreeMap<String, ConnectTask> = connecting.tasks.into_iter().collect();
    let pairs: Vec<(&HostPlan, Option<ConnectTask>)> = plan
        .hosts
        .iter()
        .map(|hp| (hp, tasks.remove(hp.name())))
        .collect();
    // Connections the plan does not use (none, unless a saved plan differs).
    Connecting {
        tasks: tasks.into_iter().collect(),
    }
    .abandon()
    .await;
    let results = bounded(
        pairs,
        parallel,
        |(hp, task): (&HostPlan, Option<ConnectTask>)| {
            let p = printer.clone();
            async move {
                let r = match task {
                    Some(t) => t
                        .await
                        .map_err(|e| anyhow!("{}: connecting: {e}", hp.name()))?,
                    None => connect_one(&hp.host, p.clone(), None, None).await,
                }?;
                let st = observe_checked(hp, &r, secrets, how).await;
                Ok::<_, anyhow::Error>((r, st))
            }
        },
    )
    .await;
    let mut remotes = Vec::new();
    let mut observed = BTreeMap::new();
    let (mut unreachable, mut failed) = (Vec::new(), Vec::new());
    for (hp, r) in plan.hosts.iter().zip(results) {
        match r {
            Ok((remote, st)) => {
                remotes.push(remote);
                match st {
                    Ok(st) => {
                        observed.insert(hp.name().to_string(), st);
                    }
                    Err(e) => failed.push(HostFailure::new(
                        hp.name(),
                        host_error(hp.name(), "observing", &e),
                        &e,
                    )),
                }
            }
            Err(e) => unreachable.push(HostFailure::new(hp.name(), format!("{e:#}"), &e)),
        }
    }
    if !unreachable.is_empty() || !failed.is_empty() {
        close_all(remotes).await;
        let shown = if unreachable.is_empty() {
            failed
        } else {
            unreachable
        };
        return Err(error::of_hosts(None, &shown));
    }
    Ok((remotes, observed))
}

type ConnectTask = tokio::task::JoinHandle<Result<SshRemote>>;

/// Connections started before the plan is rendered (one task per host, at most
/// `parallel` setting up at once), so rendering overlaps the key exchanges.
pub struct Connecting {
    tasks: Vec<(String, ConnectTask)>,
}

impl Connecting {
    pub fn start(
        hosts: &[Host],
        parallel: usize,
        persist: Option<u64>,
        printer: &Arc<Printer>,
    ) -> Connecting {
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let tasks = hosts
            .iter()
            .map(|h| {
                let (host, p, permits) = (h.clone(), printer.clone(), permits.clone());
                let task =
                    tokio::spawn(
                        async move { connect_one(&host, p, persist, Some(permits)).await },
                    );
                (h.name.clone(), task)
            })
            .collect();
        Connecting { tasks }
    }

    /// Waits for the connections and closes them (the run stopped before using them).
    pub async fn abandon(self) {
        let remotes = futures::future::join_all(self.tasks.into_iter().map(|(_, t)| t)).await;
        close_all(remotes.into_iter().filter_map(|r| r.ok()?.ok()).collect()).await;
    }
}

/// One host's connection, with its progress shown.
async fn connect_one(
    h: &Host,
    p: Arc<Printer>,
    persist: Option<u64>,
    permits: Option<Arc<Semaphore>>,
) -> Result<SshRemote> {
    let _permit = match permits {
        Some(s) => Some(s.acquire_owned().await.context("connection limit")?),
        None => None,
    };
    p.host_step(&h.name, "connecting");
    let r = ssh::connect_with(h, p.clone(), persist).await;
    p.host_step(
        &h.name,
        if r.is_ok() {
            "connected"
        } else {
            "unreachable"
        },
    );
    r
}

pub async fn close_all(remotes: Vec<SshRemote>) {
    futures::future::join_all(remotes.into_iter().map(|r| r.close())).await;
}
