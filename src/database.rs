//! The database side of a run: what the primary must hold (database, tables, accounts)
//! and whether each replica replicates from it, planned from the observed state, and
//! carried out after the files are in place: the primary converged first, then each
//! new replica seeded from a consistent dump streamed through the tool's own SSH
//! connections (nothing written to disk), then started by GTID.

pub mod backup;
pub mod dump;
pub mod replica;
pub mod reseed;
pub mod restore;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::output::Printer;
use crate::plan::{DbPlan, DbRole, HostPlan, Plan, PrimaryRef};
use crate::protocol::database::{
    DbPrimary, DbReplicaPassword, DbReplicaRemove, DbReplicaStart, DbSeedPrepare, DbSpec, DbUser,
    Password, PrimarySource, ReplicationLogin,
};
use crate::protocol::{self, run::Observe};
use crate::remote::agent::DbState;
use crate::remote::Remote;
use crate::secrets::{mysql_native_hash, Secrets};

/// What a run does to a host's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum DbChange {
    /// Create what is missing on the primary (steps say what). `rotate`: accounts
    /// (user@host) whose password changes, which a rolling run changes one web server
    /// at a time, just before that server's application restarts with it.
    ConvergePrimary {
        steps: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rotate: Vec<String>,
    },
    /// The replication secret changed: the replica logs in with the new one.
    ReplicaPassword { from: String },
    /// The host is no longer a replica: replication stopped and reset before its
    /// database server stops with its role.
    RemoveReplica { from: String },
    /// Copy the primary into this replica and start replication by GTID.
    SeedReplica { from: String, reason: String },
    /// The server was not running when observed: decide once it runs.
    CheckReplica { from: String },
    /// The replica is not as planned in a way that is safe to put right in place
    /// (src/database/replica.rs): `read_only`, a stopped thread, the source.
    RepairReplica {
        from: String,
        repairs: Vec<replica::ReplicaRepair>,
    },
}

impl DbChange {
    pub fn describe(&self) -> String {
        match self {
            DbChange::ConvergePrimary { steps, .. } => {
                format!("database: {}", steps.join("; "))
            }
            DbChange::RemoveReplica { from } => format!(
                "database: stop replicating from {from} and forget it (RESET SLAVE ALL), then the server stops with its role; its data stays"
            ),
            DbChange::ReplicaPassword { from } => format!(
                "database: log in to {from} with the new replication password (replication restarted, GTID position kept)"
            ),
            DbChange::SeedReplica { from, reason } => {
                format!(
                    "database: seed from {from} (streamed dump) and replicate by GTID ({reason})"
                )
            }
            DbChange::CheckReplica { from } => format!(
                "database: not running when observed; seed from {from} if it does not replicate"
            ),
            DbChange::RepairReplica { from, repairs } => {
                let what: Vec<String> = repairs
                    .iter()
                    .map(replica::ReplicaRepair::describe)
                    .collect();
                format!("database: replica of {from}: {}", what.join("; "))
            }
        }
    }
}

/// The database part of an agent request: accounts with password hashes (never clear).
pub fn db_spec(db: &DbPlan, secrets: &Secrets) -> Result<DbSpec> {
    let users = db
        .users
        .iter()
        .map(|u| {
            Ok(DbUser {
                user: u.user.clone(),
                host: u.host.clone(),
                grants: u.grants.clone(),
                hash: mysql_native_hash(secrets.require(&u.secret)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let replication = match &db.primary {
        Some(p) => Some(ReplicationLogin {
            user: p.user.clone(),
            hash: mysql_native_hash(secrets.require(&p.secret)?),
        }),
        None => None,
    };
    Ok(DbSpec {
        role: db.role,
        database: db.database.clone(),
        users,
        schema: db.schema.clone(),
        tables: db.tables.clone(),
        replication,
    })
}

/// A replica's source in a request: `host` (the primary's address, or the new
/// primary's in a promotion) with the replication account of `pref`.
pub fn source(pref: &PrimaryRef, host: &str, secrets: &Secrets) -> Result<PrimarySource> {
    Ok(PrimarySource {
        host: host.to_string(),
        port: pref.port,
        user: pref.user.clone(),
        password: Password(secrets.require(&pref.secret)?.expose().to_string()),
    })
}

/// A database spec keeping only the accounts (`user@host`) that `keep` accepts: for
/// changing some passwords on the primary and nothing else.
pub fn accounts_only(spec: &DbSpec, keep: impl Fn(&str) -> bool) -> DbSpec {
    let mut spec = spec.clone();
    spec.users
        .retain(|u| keep(&format!("{}@{}", u.user, u.host)));
    spec
}

/// Plans a host's database change from what was observed. Pure.
pub fn diff(hp: &HostPlan, state: Option<&DbState>) -> Option<DbChange> {
    let db = hp.db.as_ref()?;
    let st = state.cloned().unwrap_or_default();
    match db.role {
        DbRole::Primary => primary_change(db, &st),
        DbRole::Replica => replica_change(db, &st),
    }
}

/// What converging a primary does: start it, create the database, accounts and
/// tables that are missing, set passwords and grants that differ.
fn primary_change(db: &DbPlan, st: &DbState) -> Option<DbChange> {
    if !st.running {
        return Some(DbChange::ConvergePrimary {
            steps: vec!["the database server is not running: start it, then create what is missing of the database, tables and accounts".into()],
            rotate: Vec::new(),
        });
    }
    let mut steps = Vec::new();
    let mut rotate = Vec::new();
    if st.database_exists != Some(true) {
        steps.push(format!("create database {}", db.database));
    }
    for u in &db.users {
        let seen = st
            .users
            .iter()
            .find(|s| s.user == u.user && s.host == u.host);
        match seen {
            None => steps.push(format!("create user {}@{}", u.user, u.host)),
            Some(s) if !s.exists => steps.push(format!("create user {}@{}", u.user, u.host)),
            Some(s) => {
                if !s.password_ok {
                    rotate.push(format!("{}@{}", u.user, u.host));
                    steps.push(format!(
                        "set the password of {}@{} (from secret {})",
                        u.user, u.host, u.secret
                    ));
                }
                if !s.grants_ok {
                    steps.push(format!(
                        "grant {} to {}@{}",
                        u.grants.join(", "),
                        u.user,
                        u.host
                    ));
                }
            }
        }
    }
    if db.schema.is_some() && !st.missing_tables.is_empty() {
        steps.push(format!("create tables {}", st.missing_tables.join(", ")));
    }
    (!steps.is_empty()).then_some(DbChange::ConvergePrimary { steps, rotate })
}

/// What a replica needs: a check once its server starts, a seed when it does not
/// replicate from the primary, a new password, or repairs.
fn replica_change(db: &DbPlan, st: &DbState) -> Option<DbChange> {
    let primary = db.primary.as_ref()?;
    if !st.running {
        return Some(DbChange::CheckReplica {
            from: primary.name.clone(),
        });
    }
    match &st.replica {
        None => Some(DbChange::SeedReplica {
            from: primary.name.clone(),
            reason: "not replicating".into(),
        }),
        Some(r) if r.master_host.as_deref() != Some(primary.address.as_str()) => {
            Some(DbChange::SeedReplica {
                from: primary.name.clone(),
                reason: format!(
                    "replicates from {} instead",
                    r.master_host.as_deref().unwrap_or("nowhere")
                ),
            })
        }
        Some(r) => match replica::assess(st, r, primary, None) {
            // Not a change but an error that stops diff and apply
            // (replica::diverged_replicas, with the primary's state).
            replica::Verdict::Diverged(_) => None,
            // Restarts replication (both threads) with the new password; the
            // rest, if any, in the next run.
            _ if st.replica_password_ok == Some(false) => Some(DbChange::ReplicaPassword {
                from: primary.name.clone(),
            }),
            replica::Verdict::Repair(repairs) => Some(DbChange::RepairReplica {
                from: primary.name.clone(),
                repairs,
            }),
            replica::Verdict::Healthy | replica::Verdict::Reconnecting { .. } => None,
        },
    }
}

/// The connection to a host of the plan (remotes are in plan order).
pub fn remote_of<'a>(
    plan: &Plan,
    remotes: &[&'a dyn Remote],
    name: &str,
) -> Option<&'a dyn Remote> {
    plan.hosts
        .iter()
        .zip(remotes)
        .find(|(h, _)| h.name() == name)
        .map(|(_, r)| *r)
}

/// Carries out the database changes: the primary first, then each replica in turn.
/// A replica whose server was not running when observed, observed again now that it
/// runs: what it needs then (an error if it has diverged from its primary).
async fn recheck_replica(
    hp: &HostPlan,
    db: &DbPlan,
    replica: &dyn Remote,
    secrets: &Secrets,
) -> Result<Option<DbChange>> {
    let host = hp.name();
    let request = Observe {
        db: Some(db_spec(db, secrets)?),
        ..Observe::default()
    };
    let st: Option<DbState> = protocol::call(replica, &request).await?.db;
    if let Some(d) = st.as_ref().and_then(|s| replica::divergence(db, s)) {
        anyhow::bail!(
            "{host}: the replica has diverged from its primary: {}; re-seed it with `foobar-infra db reseed INVENTORY {host}`",
            d.error
        );
    }
    Ok(diff(hp, st.as_ref()))
}

pub async fn converge(
    plan: &Plan,
    changes: &[(String, DbChange)],
    remotes: &[&dyn Remote],
    secrets: &Secrets,
    printer: &Printer,
) -> Result<()> {
    let remote_of = |name: &str| remote_of(plan, remotes, name);
    let Some(primary) = plan.db_primary() else {
        return Ok(());
    };
    let primary_db = primary.db.as_ref().expect("primary has a db plan");
    let primary_remote = remote_of(primary.name());

    // The primary converges whenever anything database-related is to be done, so a
    // replica is never seeded from a primary that lacks the accounts.
    if !changes.is_empty() {
        let Some(r) = primary_remote else {
            anyhow::bail!(
                "the database primary {} is not among the selected hosts (--limit): it must be converged first",
                primary.name()
            );
        };
        printer.status(
            "Database",
            format!("{}: converging the primary", primary.name()),
        );
        let request = DbPrimary {
            db: db_spec(primary_db, secrets)?,
        };
        let answer = protocol::call(r, &request)
            .await
            .with_context(|| format!("{}: converging the database primary", primary.name()))?;
        for step in &answer.done {
            printer.detail("Database", format!("{}: {step}", primary.name()));
        }
    }

    for (host, change) in changes {
        let hp = plan.host(host).context("host of a database change")?;
        let Some(db) = hp.db.as_ref().filter(|d| d.role == DbRole::Replica) else {
            continue;
        };
        let Some(replica) = remote_of(host) else {
            continue;
        };
        let todo = match change {
            DbChange::CheckReplica { .. } => recheck_replica(hp, db, replica, secrets).await?,
            other => Some(other.clone()),
        };
        let pref = db.primary.as_ref().context("replica without primary")?;
        match todo {
            Some(DbChange::SeedReplica { .. }) => {}
            Some(DbChange::RepairReplica { repairs, .. }) => {
                replica::repair(replica, db, &repairs, secrets, printer).await?;
                printer.status("Replicating", format!("{host} from {} (GTID)", pref.name));
                continue;
            }
            // Done before the files (rotate_replication, remove_replicas), or nothing.
            _ => continue,
        }
        let source = primary_remote.context("the primary is not connected")?;
        seed(source, replica, db, secrets, printer)
            .await
            .with_context(|| format!("{host}: seeding the replica from {}", pref.name))?;
        printer.status("Replicating", format!("{host} from {} (GTID)", pref.name));
    }
    Ok(())
}

/// A rotated replication secret, before anything else in the run (a replica must
/// replicate while the application accounts rotate): the replicas' accounts change on
/// the primary, then each replica logs in with the new password.
pub async fn rotate_replication(
    plan: &Plan,
    replicas: &[String],
    remotes: &[&dyn Remote],
    secrets: &Secrets,
    printer: &Printer,
) -> Result<()> {
    let remote_of = |name: &str| remote_of(plan, remotes, name);
    let primary = plan.db_primary().context("no database primary")?;
    let primary_remote = remote_of(primary.name()).with_context(|| {
        format!(
            "the database primary {} is not among the selected hosts (--limit)",
            primary.name()
        )
    })?;
    // Each replica with the account it logs in with (user@its-address).
    let mut targets = Vec::new();
    for name in replicas {
        let hp = plan.host(name).context("replica of a password change")?;
        let pref = hp
            .db
            .as_ref()
            .and_then(|d| d.primary.as_ref())
            .context("replica without primary")?;
        targets.push((name, pref, format!("{}@{}", pref.user, hp.host.address)));
    }
    let full = db_spec(primary.db.as_ref().context("primary db plan")?, secrets)?;
    let spec = accounts_only(&full, |a| targets.iter().any(|(_, _, acc)| acc == a));
    printer.status(
        "Database",
        format!(
            "{}: new replication password for {}",
            primary.name(),
            replicas.join(", ")
        ),
    );
    protocol::call(primary_remote, &DbPrimary { db: spec })
        .await
        .with_context(|| format!("{}: changing the replication accounts", primary.name()))?;
    for (name, pref, _) in &targets {
        let r = remote_of(name).with_context(|| format!("{name} is not connected"))?;
        let password = secrets.require(&pref.secret)?;
        let request = DbReplicaPassword {
            password: Password(password.expose().to_string()),
            timeout_s: 30,
        };
        protocol::call(r, &request)
            .await
            .with_context(|| format!("{name}: changing the replication password"))?;
        printer.status("Replicating", format!("{name} with the new password"));
    }
    Ok(())
}

/// Replicas leaving the stack, before their database server stops with the role.
pub async fn remove_replicas(
    plan: &Plan,
    hosts: &[String],
    remotes: &[&dyn Remote],
    printer: &Printer,
) -> Result<()> {
    for name in hosts {
        let r =
            remote_of(plan, remotes, name).with_context(|| format!("{name} is not connected"))?;
        printer.status(
            "Database",
            format!("{name}: replication stopped and reset (no longer a replica)"),
        );
        protocol::call(r, &DbReplicaRemove {})
            .await
            .with_context(|| format!("{name}: removing the replica"))?;
    }
    Ok(())
}

/// Prepares the replica, streams a consistent dump from the primary into it, and
/// starts replication at the dump's GTID position.
pub async fn seed(
    primary: &dyn Remote,
    replica: &dyn Remote,
    db: &DbPlan,
    secrets: &Secrets,
    printer: &Printer,
) -> Result<()> {
    let pref = db.primary.as_ref().context("replica without primary")?;
    printer.status(
        "Seeding",
        format!("{} from {}", replica.name(), primary.name()),
    );
    let request = DbSeedPrepare {
        db: db_spec(db, secrets)?,
    };
    protocol::call(replica, &request).await?;

    let (writer, reader) = tokio::io::duplex(1 << 20);
    // --gtid with --master-data writes SET GLOBAL gtid_slave_pos for the dump's position.
    let dump_argv = [
        "mariadb-dump",
        "--single-transaction",
        "--gtid",
        "--master-data=1",
        "--routines",
        "--triggers",
        "--databases",
        &db.database,
    ];
    let dump = primary.exec_io(
        &dump_argv,
        Box::new(tokio::io::empty()),
        Some(Box::new(writer)),
        "database dump",
    );
    // Imported without binary logging: the rows arrive with the primary's GTIDs later.
    let load = replica.exec_io(
        &["mariadb", "--init-command=SET sql_log_bin=0"],
        Box::new(reader),
        None,
        "database load",
    );
    let (d, l) = tokio::join!(dump, load);
    let d = d?;
    let l = l?;
    if d.status != Some(0) {
        anyhow::bail!(
            "{}: mariadb-dump failed: {}",
            primary.name(),
            String::from_utf8_lossy(&d.stderr).trim()
        );
    }
    if l.status != Some(0) {
        anyhow::bail!(
            "{}: loading the dump failed: {}",
            replica.name(),
            String::from_utf8_lossy(&l.stderr).trim()
        );
    }
    let request = DbReplicaStart {
        primary: source(pref, &pref.address, secrets)?,
        timeout_s: 30,
    };
    protocol::call(replica, &request).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::agent::{DbUserState, ReplicaState};

    use crate::render::lab_plan;

    /// The primary as observed with every account in place, but `stale` with an old
    /// password.
    fn primary_state(hp: &HostPlan, stale: &str) -> DbState {
        let db = hp.db.as_ref().unwrap();
        DbState {
            running: true,
            database_exists: Some(true),
            users: db
                .users
                .iter()
                .map(|u| DbUserState {
                    user: u.user.clone(),
                    host: u.host.clone(),
                    exists: true,
                    password_ok: format!("{}@{}", u.user, u.host) != stale,
                    grants_ok: true,
                })
                .collect(),
            ..DbState::default()
        }
    }

    #[test]
    fn a_changed_password_is_a_rotation_of_exactly_that_account() {
        let plan = lab_plan();
        let primary = plan.db_primary().unwrap();
        assert_eq!(diff(primary, Some(&primary_state(primary, "none"))), None);
        match diff(primary, Some(&primary_state(primary, "foobar@10.231.1.12"))) {
            Some(DbChange::ConvergePrimary { steps, rotate }) => {
                assert_eq!(rotate, ["foobar@10.231.1.12"]);
                assert_eq!(steps.len(), 1);
                assert!(steps[0].contains("set the password of foobar@10.231.1.12"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_replica_with_an_old_replication_password_gets_the_new_one() {
        let plan = lab_plan();
        let replica = plan.host("web-02").unwrap();
        let state = |ok| DbState {
            running: true,
            replica: Some(ReplicaState {
                master_host: Some("10.231.1.11".into()),
                ..ReplicaState::default()
            }),
            replica_password_ok: ok,
            ..DbState::default()
        };
        assert_eq!(diff(replica, Some(&state(Some(true)))), None);
        assert_eq!(
            diff(replica, Some(&state(None))),
            None,
            "unknown is not a change"
        );
        assert_eq!(
            diff(replica, Some(&state(Some(false)))),
            Some(DbChange::ReplicaPassword {
                from: "web-01".into()
            })
        );
    }
}
