//! One run against the hosts, as phases in order: connect and observe, preflight,
//! then [`apply`]: upload, stage and validate everywhere, commit (the rolling group one
//! host at a time), databases, release rollout, and on any failure abort and rollback.
//! One module per phase.

pub mod balancer;
pub mod commit;
pub mod connect;
pub mod firewall;
pub mod info;
pub mod observe;
pub mod outside;
pub mod parallel;
pub mod preflight;
pub mod report;
pub mod rollback;
pub mod rolling;
pub mod rollout;
pub mod rotation;
pub mod stage;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::json;

use balancer::{balancers, set_backend_state};
use commit::{commit_deferred, commit_host};
use info::RunInfo;
use parallel::bounded;
use report::{host_error, report, HostReport};
use rollback::{abort, rollback};
use rolling::{roll_host, Done, Step};
use rollout::rollout_releases;
use rotation::{rotation, Rotation};
use stage::stage_request;

use crate::database;
use crate::diff::{Changes, HostChanges};
use crate::inventory::Role;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan, Service, ServiceAction};
use crate::remote::agent;
use crate::remote::Remote;
use crate::secrets::Secrets;

/// A host taking part in the file/release phase.
type Work<'a> = (&'a HostPlan, &'a HostChanges, &'a dyn Remote);

/// Applies the changes: files and services (all or nothing), then the databases.
pub async fn apply(
    plan: &Plan,
    changes: &Changes,
    remotes: &[&dyn Remote],
    run: &RunInfo,
    secrets: &Secrets,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let replica_passwords: Vec<String> = changes
        .hosts
        .iter()
        .filter(|hc| matches!(hc.db, Some(database::DbChange::ReplicaPassword { .. })))
        .map(|hc| hc.host.clone())
        .collect();
    if !changes.topology.replicas_removed.is_empty() {
        database::remove_replicas(plan, &changes.topology.replicas_removed, remotes, printer)
            .await?;
    }
    if !replica_passwords.is_empty() {
        database::rotate_replication(plan, &replica_passwords, remotes, secrets, printer).await?;
    }
    let rotation = rotation(plan, changes, remotes, secrets)?;
    let (mut reports, deferred) = apply_files(
        plan,
        changes,
        remotes,
        run,
        rotation.as_ref(),
        parallel,
        printer,
    )
    .await?;
    let db_changes: Vec<(String, database::DbChange)> = changes
        .hosts
        .iter()
        .filter_map(|hc| hc.db.clone().map(|d| (hc.host.clone(), d)))
        .collect();
    if !db_changes.is_empty() {
        database::converge(plan, &db_changes, remotes, secrets, printer).await?;
        for (host, change) in &db_changes {
            match reports.iter_mut().find(|r| &r.host == host) {
                Some(r) => r.services.push("database".into()),
                None => reports.push(HostReport {
                    host: host.clone(),
                    files_changed: 0,
                    services: vec!["database".into()],
                    seconds: 0.0,
                    result: "applied".into(),
                }),
            }
            printer.event(json!({"event": "database", "host": host, "change": change}));
        }
        // Web servers whose database converged only now went back into the pool without
        // a wait (their health check needs the database): those that served before the
        // run must serve again (the others are waited for at their release switch).
        let lbs = balancers(plan, remotes);
        for (host, change) in &db_changes {
            let served = changes.in_service.iter().any(|s| s == host);
            let switches = changes.host(host).is_some_and(|hc| hc.release.is_some());
            if served && !switches && database_comes_later(change) {
                set_backend_state(&lbs, host, "ready", true, printer).await?;
            }
        }
    }
    // Releases next: the application needs its database accounts to pass its check.
    for (host, secs) in rollout_releases(plan, changes, remotes, printer).await? {
        match reports.iter_mut().find(|r| r.host == host) {
            Some(r) => {
                r.services.push("release".into());
                r.seconds += secs;
            }
            None => reports.push(HostReport {
                host,
                files_changed: 0,
                services: vec!["release".into()],
                seconds: secs,
                result: "applied".into(),
            }),
        }
    }
    // Last, the load balancers that take in the web servers made ready above.
    if !deferred.is_empty() {
        reports.extend(commit_deferred(&deferred, run, parallel, printer).await?);
    }
    Ok(reports)
}

/// Whether the host's database is only put in place after the file phase (seeded, or
/// its server not running when observed): its health check cannot pass before.
fn database_comes_later(change: &database::DbChange) -> bool {
    matches!(
        change,
        database::DbChange::SeedReplica { .. } | database::DbChange::CheckReplica { .. }
    )
}

/// Files, services and releases: upload and stage everywhere first, then commit; hosts
/// whose application or database restarts go one at a time (drained from the load
/// balancers while they do); any failure restores every host changed in the run.
async fn apply_files<'a>(
    plan: &'a Plan,
    changes: &'a Changes,
    remotes: &[&'a dyn Remote],
    run: &RunInfo,
    rotation: Option<&Rotation<'_>>,
    parallel: usize,
    printer: &Printer,
) -> Result<(Vec<HostReport>, Vec<Work<'a>>)> {
    let work: Vec<Work> = plan
        .hosts
        .iter()
        .zip(remotes)
        .filter_map(|(hp, r)| {
            changes
                .host(hp.name())
                .filter(|hc| !hc.files_unchanged())
                .map(|hc| (hp, hc, *r))
        })
        .collect();
    for (hp, _, _) in &work {
        printer.event(json!({"event": "host-started", "host": hp.name()}));
    }

    // Phase 0: releases are uploaded beside the current one (not yet served).
    let uploads: Vec<Work> = plan
        .hosts
        .iter()
        .zip(remotes.iter().copied())
        .filter_map(|(hp, r)| {
            changes
                .host(hp.name())
                .filter(|hc| hc.release.as_ref().is_some_and(|rc| rc.upload))
                .map(|hc| (hp, hc, r))
        })
        .collect();
    let uploaded = bounded(uploads.clone(), parallel, |(hp, _, r)| async move {
        let rel = hp
            .release
            .as_ref()
            .expect("release change has a release plan");
        printer.status(
            "Uploading",
            format!("{} release {} ({} files)", hp.name(), rel.id, rel.files),
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(rel.tar.as_slice());
        agent::call(
            r,
            "release-upload",
            json!({"op": "release-upload", "root": rel.root, "id": rel.id, "tar_b64": b64}),
        )
        .await
    })
    .await;
    let failures: Vec<String> = uploads
        .iter()
        .zip(&uploaded)
        .filter_map(|((hp, _, _), res)| {
            res.as_ref()
                .err()
                .map(|e| host_error(hp.name(), "uploading the release", e))
        })
        .collect();
    if !failures.is_empty() {
        bail!("nothing was changed on any host:\n{}", failures.join("\n"));
    }

    if work.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }

    // Phase 1: stage and validate everywhere.
    let to_stage: Vec<Work> = work
        .iter()
        .copied()
        .filter(|(_, hc, _)| !hc.files_unchanged())
        .collect();
    for (hp, _, _) in &to_stage {
        printer.status("Staging", hp.name());
    }
    let staged = bounded(to_stage.clone(), parallel, |(hp, hc, r)| async move {
        printer.host_step(hp.name(), "staging and validating");
        let res = agent::call(r, "stage", stage_request(hp, hc, run)).await;
        printer.host_step(
            hp.name(),
            if res.is_ok() {
                "validated"
            } else {
                "validation failed"
            },
        );
        res
    })
    .await;
    let mut failures = Vec::new();
    for ((hp, _, _), s) in to_stage.iter().zip(&staged) {
        if let Err(e) = s {
            failures.push(host_error(hp.name(), "staging", e));
        }
    }
    if !failures.is_empty() {
        // The failed hosts cleaned up after themselves; undo the others.
        let ok: Vec<_> = to_stage
            .iter()
            .zip(&staged)
            .filter(|(_, s)| s.is_ok())
            .map(|(w, _)| *w)
            .collect();
        abort(&ok, run, parallel, printer).await;
        for f in &failures {
            printer.event(json!({"event": "error", "message": f}));
        }
        bail!("nothing was changed on any host:\n{}", failures.join("\n"));
    }
    for ((hp, hc, _), s) in to_stage.iter().zip(&staged) {
        if let Some(old) = s.as_ref().ok().map(|a| &a["replaced_stale_lock"]) {
            if old.is_object() {
                printer.warn(format!(
                    "{}: the lock left by run {} of {} was taken: its holder had ended (the run was interrupted)",
                    hp.name(),
                    old["run_id"].as_str().unwrap_or("?"),
                    old["owner"].as_str().unwrap_or("?")
                ));
            }
        }
        printer.status(
            "Validated",
            format!("{} ({} files)", hp.name(), hc.files.len()),
        );
    }

    // Phase 2: commit. Hosts that only reload go together; hosts whose database or
    // application restarts, or that switch release, go one at a time: replicas first,
    // the primary last.
    let rolling = |hc: &HostChanges| {
        hc.services.iter().any(|s| {
            (s.service.is_database() || s.service == Service::App)
                && s.action != ServiceAction::Reload
        })
    };
    // Load balancers that gain a web server are reloaded last, once it is ready.
    let adds = !changes.topology.backends_added.is_empty();
    let (deferred, work): (Vec<Work>, Vec<Work>) = work
        .into_iter()
        .partition(|(hp, hc, _)| adds && hp.host.has(Role::Lb) && !hc.files_unchanged());
    // Web servers that leave are drained before anything else changes.
    if !changes.topology.backends_removed.is_empty() {
        let lbs = balancers(plan, remotes);
        for server in &changes.topology.backends_removed {
            if let Err(e) = set_backend_state(&lbs, server, "drain", true, printer).await {
                abort(
                    &[to_stage.as_slice(), deferred.as_slice()].concat(),
                    run,
                    parallel,
                    printer,
                )
                .await;
                return Err(e).context("nothing was changed");
            }
        }
    }
    let (mut serial, together): (Vec<Work>, Vec<Work>) =
        work.iter().copied().partition(|(_, hc, _)| rolling(hc));
    serial.sort_by_key(|(hp, _, _)| (hp.host.has(Role::DbPrimary), !hp.host.has(Role::DbReplica)));
    let lbs = balancers(plan, remotes);

    let mut done = Done::default();
    let mut reports = Vec::new();
    let mut failure: Option<String> = None;
    let together_staged: Vec<Work> = together
        .iter()
        .copied()
        .filter(|(_, hc, _)| !hc.files_unchanged())
        .collect();
    let results = bounded(together_staged.clone(), parallel, |(hp, hc, r)| {
        commit_host(hp, hc, r, run, false)
    })
    .await;
    for ((hp, hc, r), (res, took)) in together_staged.into_iter().zip(results) {
        match res {
            Ok(_) => {
                done.committed.push((hp, hc, r));
                reports.push(report(hp, hc, took, "applied", printer));
            }
            Err(e) => {
                failure.get_or_insert(host_error(hp.name(), "applying", &e));
            }
        }
    }
    let mut pending: Vec<Work> = serial.clone();
    if failure.is_none() {
        for (hp, hc, r) in serial {
            pending.retain(|(p, _, _)| p.name() != hp.name());
            let t0 = Instant::now();
            // Only a server that was in service is waited for when it goes back: one
            // never in service (first deploy) or seeded as a replica after this phase
            // cannot pass its health check yet (its release or database comes later).
            let wait_ready = changes.in_service.iter().any(|s| s == hp.name())
                && !hc.db.as_ref().is_some_and(database_comes_later);
            let step = Step {
                lbs: &lbs,
                run,
                rotation,
                wait_ready,
                printer,
            };
            match roll_host(hp, hc, r, &step, &mut done).await {
                Ok(()) => reports.push(report(hp, hc, t0.elapsed(), "applied", printer)),
                Err(e) => {
                    failure = Some(format!("{e:#}"));
                    break;
                }
            }
        }
    }
    if let Some(msg) = failure {
        // Hosts staged but never committed: drop their staged files.
        let staged_only: Vec<Work> = pending
            .into_iter()
            .chain(deferred.iter().copied())
            .filter(|(_, hc, _)| !hc.files_unchanged())
            .collect();
        abort(&staged_only, run, parallel, printer).await;
        printer.event(json!({"event": "error", "message": msg}));
        let rolled = rollback(&done.committed, run, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok((reports, deferred))
}
