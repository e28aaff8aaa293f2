//! `foobar-infra apply`: observe, diff, then stage and validate on every host before
//! swapping anything in; `--dry-run` stops after the diff.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::remote::{self, Session};
use super::{runtime, Outcome};
use crate::cli::ApplyArgs;
use crate::output::Printer;
use crate::run::info::RunInfo;
use crate::run::observe::Observe;
use crate::run::report::HostReport;

/// This controller's own record of where the inventory's hosts are, kept at each apply
/// (the only place `--prune-host NAME` takes an address from); pruned hosts forgotten.
fn record_addresses(inventory: &crate::inventory::Inventory, pruned: &[String], p: &Printer) {
    use crate::address_book::{default_dir, AddressBook};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let Some(dir) = default_dir() else {
        return;
    };
    let saved = AddressBook::load(&dir, &inventory.path).and_then(|mut book| {
        book.record(inventory, pruned, now);
        book.save(&dir)
    });
    if let Err(e) = saved {
        p.warn(format!("the hosts' addresses were not recorded: {e:#}"));
    }
}

pub fn run(args: &ApplyArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let t0 = Instant::now();
    runtime()?.block_on(async {
        let mut session = open(args, p, t0).await?;
        crate::certificate::warn_deploying(&session.changes, p);
        if args.dry_run {
            let pending = remote::print_changes(&session.changes, p, "apply-dry-run");
            session.close().await;
            return Ok(if pending {
                Outcome::ChangesPending
            } else {
                Outcome::Success
            });
        }
        if !p.json {
            remote::print_changes(&session.changes, p, "apply");
        }
        // Who runs it (git commit, user) matters only when something changes: a no-op
        // apply starts no local process.
        let info = if session.changes.is_empty() {
            RunInfo::none()
        } else {
            RunInfo::new(&session.inventory, args.lock_timeout)
        };
        session.plan.canary = crate::run::canary::Canary::choose(
            session.inventory.rollout.as_ref(),
            args.canary,
            args.no_canary,
            &session.inventory.path,
        );
        // --limit never skips the drain: web servers of the run leave and rejoin the pool
        // at every load balancer of the inventory.
        if !session.changes.is_empty() {
            if let Err(e) = session.reach_outside_balancers(&args.remote, p).await {
                session.close().await;
                return Err(e);
            }
        }
        let hosts: Vec<String> = session
            .plan
            .hosts
            .iter()
            .map(|h| h.host.name.clone())
            .collect();
        match execute(session, &info, args, p).await {
            Ok(reports) => {
                summary(p, &hosts, &reports, t0.elapsed().as_secs_f64());
                Ok(Outcome::Success)
            }
            Err(e) => {
                summary_failed(p, &e, t0);
                Err(e)
            }
        }
    })
}

/// Connects and observes, then refuses before staging anything a port the stack
/// needs held by another process, or a replica diverged from its primary.
async fn open(args: &ApplyArgs, p: &Arc<Printer>, t0: Instant) -> Result<Session> {
    let confirm = if args.dry_run {
        remote::Confirm::Shown
    } else {
        remote::Confirm::new(args.yes)
    };
    let session = remote::open(&args.remote, p, Observe::Witnessed, confirm).await?;
    let command = if args.dry_run {
        "apply-dry-run"
    } else {
        "apply"
    };
    if let Err(e) = remote::refuse_blocked(&session, p, command) {
        session.close().await;
        if !args.dry_run {
            summary_failed(p, &e, t0);
        }
        return Err(e);
    }
    Ok(session)
}

/// Runs the phases, records the hosts' addresses and closes the connections; an
/// error comes back with the secrets' values masked.
async fn execute(
    mut session: Session,
    info: &RunInfo,
    args: &ApplyArgs,
    p: &Printer,
) -> Result<Vec<HostReport>> {
    let result = crate::run::apply(
        &session.plan,
        &session.changes,
        &session.remotes(),
        info,
        &session.secrets,
        args.remote.parallel,
        p,
    )
    .await;
    let pruned = &session.changes.topology.pruned_hosts;
    record_addresses(
        &session.inventory,
        if result.is_ok() { pruned } else { &[] },
        p,
    );
    let secrets = std::mem::take(&mut session.secrets);
    session.close().await;
    result.map_err(|e| secrets.mask_error(e))
}

/// The last `--json` event of a run that failed.
fn summary_failed(p: &Printer, e: &anyhow::Error, t0: Instant) {
    p.event(
        json!({"event": "summary", "ok": false, "error": crate::error::to_json(e),
                   "seconds": t0.elapsed().as_secs_f64()}),
    );
}

/// What changed where: the last `--json` event, or a table of every host.
fn summary(p: &Printer, hosts: &[String], reports: &[HostReport], seconds: f64) {
    if p.json {
        p.event(
            json!({"event": "summary", "ok": true, "hosts": reports, "seconds": seconds,
                       "changed": reports.len(), "unchanged": hosts.len() - reports.len()}),
        );
        return;
    }
    p.out(format!(
        "{:<14} {:>5}  {:<40} {:>8}",
        "HOST", "FILES", "SERVICES", "SECONDS"
    ));
    for h in hosts {
        match reports.iter().find(|r| &r.host == h) {
            Some(r) => p.out(format!(
                "{:<14} {:>5}  {:<40} {:>8.2}",
                r.host,
                r.files_changed,
                if r.services.is_empty() {
                    "-".to_string()
                } else {
                    r.services.join(", ")
                },
                r.seconds
            )),
            None => p.out(format!(
                "{h:<14} {:>5}  {:<40} {:>8}",
                0, "- (in sync)", "-"
            )),
        }
    }
    p.status(
        "Finished",
        format!(
            "{} of {} hosts changed in {seconds:.2}s",
            reports.len(),
            hosts.len()
        ),
    );
}
