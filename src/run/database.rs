//! The database phases of a run: replicas that leave and new replication logins before
//! any file changes, and after the files the databases converge (accounts, tables,
//! replicas seeded), with the web servers that waited for theirs put back in service.

use anyhow::Result;
use serde_json::json;

use super::balancer::{balancers, set_backend_state};
use super::report::{note, HostReport};
use super::Run;
use crate::database::{self, DbChange};
use crate::protocol::release::ServerState;

/// Before the files: replication stopped on hosts that stop being replicas, and
/// replicas logging in with a new replication password.
pub(super) async fn before_files(run: &Run<'_>) -> Result<()> {
    let (plan, remotes, printer) = (run.plan, run.remotes, run.printer);
    let removed = &run.changes.topology.replicas_removed;
    let replica_passwords: Vec<String> = run
        .changes
        .hosts
        .iter()
        .filter(|hc| matches!(hc.db, Some(DbChange::ReplicaPassword { .. })))
        .map(|hc| hc.host.clone())
        .collect();
    if !removed.is_empty() {
        database::remove_replicas(plan, removed, remotes, printer).await?;
    }
    if !replica_passwords.is_empty() {
        let passwords = &replica_passwords;
        database::rotate_replication(plan, passwords, remotes, run.secrets, printer).await?;
    }
    Ok(())
}

/// After the files: every database change of the run, each noted in its host's report.
pub(super) async fn converge(run: &Run<'_>, reports: &mut Vec<HostReport>) -> Result<()> {
    let Run {
        plan,
        changes,
        remotes,
        secrets,
        printer,
        ..
    } = *run;
    let db_changes: Vec<(String, DbChange)> = changes
        .hosts
        .iter()
        .filter_map(|hc| hc.db.clone().map(|d| (hc.host.clone(), d)))
        .collect();
    if db_changes.is_empty() {
        return Ok(());
    }
    database::converge(plan, &db_changes, remotes, secrets, printer).await?;
    for (host, change) in &db_changes {
        note(reports, host, "database", 0.0);
        printer.event(json!({"event": "database", "host": host, "change": change}));
    }
    // Web servers whose database converged only now went back into the pool without
    // a wait (their health check needs the database): those that served before the
    // run must serve again (the others are waited for at their release switch).
    let lbs = balancers(plan, remotes);
    for (host, change) in &db_changes {
        let served = changes.in_service.iter().any(|s| s == host);
        let switches = changes.host(host).is_some_and(|hc| hc.release.is_some());
        if served && !switches && comes_later(change) {
            set_backend_state(&lbs, host, ServerState::Ready, true, printer).await?;
        }
    }
    Ok(())
}

/// Whether the host's database is only put in place after the file phase (seeded, or
/// its server not running when observed): its health check cannot pass before.
pub(super) fn comes_later(change: &DbChange) -> bool {
    matches!(
        change,
        DbChange::SeedReplica { .. } | DbChange::CheckReplica { .. }
    )
}
