//! Re-seeding a replica that diverged from its primary (`db reseed HOST`): the same
//! seeding as a new replica's first apply ([`DbChange::SeedReplica`] through
//! [`super::converge`]), once the primary is known to be the live one, with the replica
//! drained from the load balancers while its database is replaced, `read_only` back ON
//! after, and then back in the pool.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::replica::{self, ReplicaRepair};
use super::DbChange;
use crate::output::Printer;
use crate::plan::{DbRole, Plan};
use crate::protocol::release::ServerState;
use crate::remote::agent::HostState;
use crate::remote::Remote;
use crate::run::{balancer, observe};
use crate::secrets::Secrets;

/// What the command does, in order, for `--dry-run` and before it starts.
pub fn steps(plan: &Plan, host: &str) -> Result<Vec<String>> {
    let (primary, database) = primary_of(plan, host)?;
    let lbs: Vec<&str> = balancers(plan, host);
    let mut steps = vec![format!(
        "check that {primary} is the live primary (running, writable, replicating from nobody) and that {host}'s database server runs"
    )];
    if !lbs.is_empty() {
        steps.push(format!(
            "drain {host} on {} and wait for its sessions to end",
            lbs.join(", ")
        ));
    }
    steps.extend([
        format!("on {primary}: create what is missing (database, tables, accounts); nothing else is written there"),
        format!("on {host}: stop replication and forget it, clear its binary log, drop database {database}: its data, including what was written on it, is replaced"),
        format!("stream a consistent dump of {database} from {primary} into {host} (not binary-logged there)"),
        format!("on {host}: replicate from {primary} by GTID from the dump's position; read_only ON"),
    ]);
    if !lbs.is_empty() {
        steps.push(format!(
            "put {host} back in the pool on {} (its health check must pass)",
            lbs.join(", ")
        ));
    }
    Ok(steps)
}

/// The replica's primary and database, or why `host` cannot be re-seeded.
fn primary_of<'a>(plan: &'a Plan, host: &str) -> Result<(&'a str, &'a str)> {
    let db = plan
        .host(host)
        .and_then(|h| h.db.as_ref())
        .filter(|d| d.role == DbRole::Replica)
        .with_context(|| {
            format!("{host}: not a host with the role db-replica (only a replica is re-seeded)")
        })?;
    let pref = db.primary.as_ref().context("replica without primary")?;
    Ok((pref.name.as_str(), db.database.as_str()))
}

/// The load balancers of the plan, when `host` is one of their web servers.
fn balancers<'a>(plan: &'a Plan, host: &str) -> Vec<&'a str> {
    if !plan.backends.iter().any(|b| b == host) {
        return Vec::new();
    }
    plan.hosts
        .iter()
        .filter(|h| h.host.has(crate::inventory::Role::Lb))
        .map(|h| h.name())
        .collect()
}

/// The primary must be the live one and the replica's server must run. Pure.
pub fn check(plan: &Plan, host: &str, observed: &BTreeMap<String, HostState>) -> Result<()> {
    let (primary, _) = primary_of(plan, host)?;
    let db = |name: &str| observed.get(name).and_then(|s| s.db.as_ref());
    match db(primary) {
        Some(p) if p.running && p.read_only != Some(true) && p.replica.is_none() => {}
        Some(p) if p.running => bail!(
            "{primary} is not the live primary ({}): the replica would be copied from a server that does not take the writes; \
             after a failover, make the inventory name the live primary first (`foobar-infra db promote`)",
            match &p.replica {
                Some(r) => format!(
                    "it replicates from {}",
                    r.master_host.as_deref().unwrap_or("?")
                ),
                None => "it is read-only".to_string(),
            }
        ),
        _ => bail!("{primary}: the database server is not running: there is nothing to copy from"),
    }
    if !db(host).is_some_and(|d| d.running) {
        bail!("{host}: the database server is not running: start it first (`foobar-infra apply` does)");
    }
    Ok(())
}

/// Re-seeds `host` from its primary. `remotes` in plan order; the plan holds the
/// primary, the replica and the load balancers.
pub async fn run(
    plan: &Plan,
    host: &str,
    remotes: &[&dyn Remote],
    secrets: &Secrets,
    parallel: usize,
    printer: &Printer,
) -> Result<()> {
    let observed = observe::observe_all(plan, remotes, secrets, parallel).await?;
    check(plan, host, &observed)?;
    let (primary, _) = primary_of(plan, host)?;
    let hp = plan.host(host).context("the replica's plan")?;
    let db = hp.db.as_ref().context("the replica's database plan")?;
    let seen = observed.get(host).and_then(|s| s.db.as_ref());
    if let Some(d) = seen.and_then(|st| replica::divergence(db, st)) {
        printer.status("Diverged", format!("{host}: {}", d.error));
    }
    let lbs = if balancers(plan, host).is_empty() {
        Vec::new()
    } else {
        balancer::balancers(plan, remotes)
    };
    balancer::set_backend_state(&lbs, host, ServerState::Drain, true, printer).await?;
    let change = DbChange::SeedReplica {
        from: primary.to_string(),
        reason: "db reseed".into(),
    };
    let seeded = async {
        super::converge(
            plan,
            &[(host.to_string(), change)],
            remotes,
            secrets,
            printer,
        )
        .await?;
        let r = super::remote_of(plan, remotes, host).context("the replica's connection")?;
        replica::repair(r, db, &[ReplicaRepair::ReadOnly], secrets, printer).await
    }
    .await;
    if let Err(e) = seeded {
        let drained = if lbs.is_empty() {
            String::new()
        } else {
            format!("; {host} stays drained on the load balancers until a `db reseed` succeeds")
        };
        return Err(e.context(format!("re-seeding {host} from {primary}{drained}")));
    }
    balancer::set_backend_state(&lbs, host, ServerState::Ready, true, printer).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::agent::{DbState, ReplicaState};

    fn observed(primary: DbState, replica: DbState) -> BTreeMap<String, HostState> {
        let host = |db: DbState| {
            let mut st: HostState = serde_json::from_value(serde_json::json!({
                "init": "systemd", "hostname": "x", "files": {},
            }))
            .unwrap();
            st.db = Some(db);
            st
        };
        BTreeMap::from([
            ("web-01".to_string(), host(primary)),
            ("web-02".to_string(), host(replica)),
        ])
    }

    fn up(read_only: bool) -> DbState {
        DbState {
            running: true,
            read_only: Some(read_only),
            ..DbState::default()
        }
    }

    #[test]
    fn only_a_replica_is_re_seeded_and_the_steps_name_every_host() {
        let plan = crate::render::lab_plan();
        let err = steps(&plan, "web-01").unwrap_err().to_string();
        assert!(err.contains("not a host with the role db-replica"), "{err}");
        assert!(steps(&plan, "nope").is_err());
        let s = steps(&plan, "web-02").unwrap().join("\n");
        assert!(s.contains("drain web-02 on lb-01"), "{s}");
        assert!(s.contains("dump of foobar from web-01 into web-02"), "{s}");
        assert!(s.contains("put web-02 back in the pool on lb-01"), "{s}");
    }

    #[test]
    fn the_primary_must_be_the_live_one_and_the_replica_must_run() {
        let plan = crate::render::lab_plan();
        assert!(check(&plan, "web-02", &observed(up(false), up(false))).is_ok());
        let err = check(&plan, "web-02", &observed(up(true), up(true)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web-01 is not the live primary (it is read-only)"),
            "{err}"
        );
        let mut demoted = up(false);
        demoted.replica = Some(ReplicaState {
            master_host: Some("10.231.1.12".into()),
            ..ReplicaState::default()
        });
        let err = check(&plan, "web-02", &observed(demoted, up(true)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("it replicates from 10.231.1.12"), "{err}");
        let err = check(&plan, "web-02", &observed(DbState::default(), up(true)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web-01: the database server is not running"),
            "{err}"
        );
        let err = check(&plan, "web-02", &observed(up(false), DbState::default()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web-02: the database server is not running"),
            "{err}"
        );
    }
}
