//! Observing the hosts: one `observe` request per host (behind the witness where it
//! vouches for the host), answered with what is there now.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use super::parallel::bounded;
use super::report::host_error;
use crate::database;
use crate::diff::desired_hashes;
use crate::error::HostFailure;
use crate::inventory::Role;
use crate::plan::{HostPlan, Plan};
use crate::protocol::run::{self, ReleaseRoot};
use crate::protocol::{self, Checked};
use crate::remote::agent::HostState;
use crate::remote::Remote;
use crate::secrets::Secrets;
use crate::witness::{parse_in_sync, Witness};

/// One `observe` per host, all in parallel.
pub async fn observe_all(
    plan: &Plan,
    remotes: &[&dyn Remote],
    secrets: &Secrets,
    parallel: usize,
) -> Result<BTreeMap<String, HostState>> {
    let pairs: Vec<_> = plan.hosts.iter().zip(remotes.iter().copied()).collect();
    let answers = bounded(pairs, parallel, |(hp, r)| observe_one(hp, r, secrets)).await;
    let mut observed = BTreeMap::new();
    let mut errors = Vec::new();
    for (hp, a) in plan.hosts.iter().zip(answers) {
        match a {
            Ok(st) => {
                observed.insert(hp.name().to_string(), st);
            }
            Err(e) => errors.push(HostFailure::new(
                hp.name(),
                host_error(hp.name(), "observing", &e),
                &e,
            )),
        }
    }
    if !errors.is_empty() {
        return Err(crate::error::of_hosts(None, &errors));
    }
    Ok(observed)
}

/// One host's `observe`.
pub async fn observe_one(hp: &HostPlan, r: &dyn Remote, secrets: &Secrets) -> Result<HostState> {
    protocol::call(r, &observe_request(hp, secrets)?).await
}

/// How much of a host's state a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observe {
    /// Everything the agent reports (status, rollback: history, every release).
    Full,
    /// What apply, diff and plan compare: a host the witness vouches for is taken to
    /// be exactly as planned (`src/witness.rs`); the others get a full observe.
    Witnessed,
}

/// [`observe_one`], behind the witness when the host has one and `how` allows.
pub async fn observe_checked(
    hp: &HostPlan,
    r: &dyn Remote,
    secrets: &Secrets,
    how: Observe,
) -> Result<HostState> {
    let witness = match how {
        Observe::Full => None,
        Observe::Witnessed => Witness::for_host(hp, secrets)?,
    };
    let Some(w) = witness else {
        return observe_one(hp, r, secrets).await;
    };
    let request = observe_request(hp, secrets)?;
    match protocol::call_checked(r, &request, &w.check()).await? {
        Checked::Answer(state) => Ok(state),
        Checked::Passed(line) => {
            let seen = parse_in_sync(&line).ok_or_else(|| {
                anyhow!(
                    "{}: unreadable answer of the witness: {}",
                    r.name(),
                    String::from_utf8_lossy(&line).trim()
                )
            })?;
            Ok(w.state(&seen))
        }
    }
}

fn observe_request(hp: &HostPlan, secrets: &Secrets) -> Result<run::Observe> {
    let db = hp
        .db
        .as_ref()
        .map(|d| database::db_spec(d, secrets))
        .transpose()?;
    Ok(run::Observe {
        paths: desired_hashes(hp, secrets)?,
        services: hp.services.iter().map(|s| s.unit().to_string()).collect(),
        packages: hp.packages().iter().map(|p| p.to_string()).collect(),
        max_content: 1 << 20,
        db,
        release: hp.release.as_ref().map(|r| ReleaseRoot {
            root: r.root.clone(),
        }),
        users: hp.users.clone(),
        haproxy: hp.host.has(Role::Lb),
        certs: (hp.files.iter())
            .filter(|f| f.path.ends_with(".pem"))
            .map(|f| f.path.clone())
            .collect(),
        ports: crate::run::preflight::observe_ports(hp),
    })
}
