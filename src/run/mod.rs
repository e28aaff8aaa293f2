//! One run against the hosts, as phases in order: connect and observe, preflight,
//! then [`apply`]: upload, stage and validate everywhere, commit (the rolling group one
//! host at a time), databases, release rollout, and on any failure abort and rollback.
//! One module per phase.

pub mod balancer;
pub mod canary;
mod canary_stage;
pub mod commit;
pub mod connect;
pub mod database;
pub mod firewall;
pub mod info;
pub mod observe;
pub mod order;
pub mod outside;
pub mod parallel;
pub mod preflight;
pub mod report;
pub mod response_times;
pub mod rollback;
pub mod rolling;
pub mod rollout;
pub mod rotation;
pub mod stage;

#[cfg(test)]
mod canary_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use anyhow::Result;
use serde_json::json;

use info::RunInfo;
use report::HostReport;

use crate::diff::{Changes, HostChanges};
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::remote::Remote;
use crate::secrets::Secrets;

/// A host taking part in the file/release phase.
type Work<'a> = (&'a HostPlan, &'a HostChanges, &'a dyn Remote);

/// What every phase of one apply is given.
pub(super) struct Run<'a> {
    pub plan: &'a Plan,
    pub changes: &'a Changes,
    /// One per host of the plan, in its order (then the load balancers outside
    /// `--limit`).
    pub remotes: &'a [&'a dyn Remote],
    pub info: &'a RunInfo,
    pub secrets: &'a Secrets,
    pub parallel: usize,
    pub printer: &'a Printer,
}

/// Applies the changes, phase by phase. Files and services are all or nothing: staged
/// and validated everywhere before any host commits, and any failure restores every
/// host committed in the run ([`order`] says in which order hosts commit). The
/// databases converge after the files, the releases switch after the databases (the
/// application needs its accounts), and load balancers that take in new web servers
/// reload last.
pub async fn apply(
    plan: &Plan,
    changes: &Changes,
    remotes: &[&dyn Remote],
    info: &RunInfo,
    secrets: &Secrets,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let run = Run {
        plan,
        changes,
        remotes,
        info,
        secrets,
        parallel,
        printer,
    };
    let rotation = rotation::rotation(plan, changes, remotes, secrets)?;
    // Before any change: a `--canary N` this run cannot do is refused.
    let canary = canary_stage::choose(&run, rotation.is_some())?;
    // Replicas that leave stop replicating, and new replication logins: before any file.
    database::before_files(&run).await?;
    let work = hosts_with_files(&run);
    // The canary's other web servers: staged with the rest, committed after its verdict.
    let held_back = |hp: &HostPlan| {
        canary
            .as_ref()
            .is_some_and(|c| c.held.contains(&hp.host.name))
    };
    let (held, first): (Vec<Work>, Vec<Work>) = work.iter().partition(|(hp, _, _)| held_back(hp));
    // New releases go beside the current ones, not served yet.
    rollout::upload_releases(&run).await?;
    let (mut reports, deferred) = if work.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        // All or nothing: staged and validated everywhere, then committed in order.
        stage::stage_all(&work, &run).await?;
        let order = order::commit_order(changes, &first);
        let committed = commit::commit_all(&run, &first, order, rotation.as_ref()).await;
        if committed.is_err() {
            rollback::abort(&held, info, parallel, printer).await;
        }
        committed?
    };
    // The databases, then the releases: the application needs its accounts.
    if let Err(e) = database::converge(&run, &mut reports).await {
        rollback::abort(&held, info, parallel, printer).await;
        return Err(e);
    }
    let mut releases = rollout::Releases::new(&run);
    if let Some(stage) = &canary {
        let deferred_host = |w: &&Work| deferred.iter().any(|d| d.0.name() == w.0.name());
        let committed: Vec<Work> = first
            .iter()
            .filter(|w| !deferred_host(w))
            .copied()
            .collect();
        let before = canary_stage::Before {
            committed: &committed,
            held: &held,
            deferred: &deferred,
        };
        let rot = rotation.as_ref();
        canary_stage::watch_then_the_rest(&run, stage, before, &mut releases, rot, &mut reports)
            .await?;
    }
    rollout::rollout_releases(&mut releases, |_| true).await?;
    for (host, secs) in &releases.done {
        report::note(&mut reports, host, "release", *secs);
    }
    // Last, the load balancers that take in the web servers made ready above.
    if !deferred.is_empty() {
        reports.extend(commit::commit_deferred(&deferred, info, parallel, printer).await?);
    }
    Ok(reports)
}

/// The hosts with files, services or boot state to change (announced as started).
fn hosts_with_files<'a>(run: &Run<'a>) -> Vec<Work<'a>> {
    let hosts = run.plan.hosts.iter().zip(run.remotes.iter().copied());
    let work: Vec<Work> = hosts
        .filter_map(|(hp, r)| {
            let hc = run.changes.host(hp.name())?;
            (!hc.files_unchanged()).then_some((hp, hc, r))
        })
        .collect();
    for (hp, _, _) in &work {
        run.printer
            .event(json!({"event": "host-started", "host": hp.name()}));
    }
    work
}
