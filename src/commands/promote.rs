//! `foobar-infra db promote HOST`: a replica becomes the primary. Every step is shown
//! first (`--dry-run` stops there): fence the old primary read-only and let the new one
//! catch up (when the old one answers), stop replication on the new one and make it
//! writable, point the other replicas (and the old primary) at it, then change the
//! inventory (printed, or written with --write-inventory, keeping comments and order).
//! The next `apply` re-renders the application's write address and the .cnf files.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::remote::secret_names;
use super::{load_tested_and_render, runtime, Outcome};
use crate::cli::DbPromoteArgs;
use crate::database;
use crate::inventory::{swap_db_primary, Host, Role};
use crate::output::Printer;
use crate::protocol;
use crate::protocol::database::{DbCatchUp, DbFence, DbPromote, DbReplicaStart};
use crate::remote::ssh;
use crate::secrets::Secrets;

pub fn run(args: &DbPromoteArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (inv, plan) = load_tested_and_render(&args.inventory, args.templates.templates.as_deref())?;
    let new = inv
        .host(&args.host)
        .filter(|h| h.has(Role::DbReplica))
        .with_context(|| format!("{}: not a host with the role db-replica", args.host))?;
    let old = inv
        .db_primary()
        .context("the inventory has no db-primary")?;
    let others: Vec<_> = inv
        .with_role(Role::DbReplica)
        .filter(|h| h.name != new.name)
        .collect();
    let text = std::fs::read_to_string(&inv.path)
        .with_context(|| format!("reading {}", inv.path.display()))?;
    let edited = swap_db_primary(&text, old, new)?;

    print_plan(args, p, &inv.path, (old, new), &others, &text, &edited);
    if args.dry_run {
        return Ok(Outcome::ChangesPending);
    }

    let secrets = Secrets::load(&inv, &secret_names(&plan))?;
    let repl = plan
        .host(&new.name)
        .and_then(|h| h.db.as_ref())
        .and_then(|d| d.primary.clone())
        .context("replication settings")?;
    let start_replica = DbReplicaStart {
        primary: database::source(&repl, &new.address.to_string(), &secrets)?,
        timeout_s: 30,
    };
    runtime()?
        .block_on(promote(p, (old, new), &others, &start_replica))
        .map_err(|e| secrets.mask_error(e))?;
    record(args, p, &inv.path, (old, new), &edited)
}

/// The steps of the promotion, in words, and the inventory change it needs.
fn print_plan(
    args: &DbPromoteArgs,
    p: &Printer,
    path: &std::path::Path,
    (old, new): (&Host, &Host),
    others: &[&Host],
    text: &str,
    edited: &str,
) {
    let mut steps = vec![
        format!("fence {} read-only and wait until {} has applied all it wrote (skipped if {} does not answer)", old.name, new.name, old.name),
        format!("on {}: stop replication, forget it, make it writable", new.name),
    ];
    for r in others {
        steps.push(format!("point {} at {} (GTID)", r.name, new.name));
    }
    steps.push(format!(
        "point {} at {} when it answers (read-only); else the next apply seeds it",
        old.name, new.name
    ));
    steps.push(format!(
        "inventory {}: {} becomes db-replica, {} db-primary ({})",
        path.display(),
        old.name,
        new.name,
        if args.write_inventory {
            "written"
        } else {
            "printed: make this change"
        }
    ));
    steps.push("then run `foobar-infra apply`: the application writes to the new primary, .cnf files follow".into());
    for (i, s) in steps.iter().enumerate() {
        p.out(format!("{}. {s}", i + 1));
    }
    let diff = similar::TextDiff::from_lines(text, edited)
        .unified_diff()
        .header(
            &format!("a/{}", path.display()),
            &format!("b/{}", path.display()),
        )
        .to_string();
    for line in diff.lines() {
        p.out(p.paint_diff_line(line));
    }
}

/// Fences the old primary (if it answers), promotes the new one and points every
/// replica, the old primary last, at it.
async fn promote(
    p: &Arc<Printer>,
    (old, new): (&Host, &Host),
    others: &[&Host],
    start_replica: &DbReplicaStart,
) -> Result<()> {
    let new_r = ssh::connect(new, p.clone()).await?;
    let old_r = match ssh::connect(old, p.clone()).await {
        Ok(r) => Some(r),
        Err(e) => {
            p.warn(format!(
                "{}: {e:#}: not fenced, the new primary cannot wait for it",
                old.name
            ));
            None
        }
    };
    let result = async {
        let mut fenced = false;
        if let Some(o) = &old_r {
            match protocol::call(o, &DbFence {}).await {
                Ok(v) => {
                    fenced = true;
                    let gtid = v.gtid_binlog_pos;
                    p.status("Fenced", format!("{} read-only at GTID {gtid}", old.name));
                    let catch_up = DbCatchUp {
                        gtid,
                        timeout_s: 60,
                    };
                    protocol::call(&new_r, &catch_up)
                        .await
                        .with_context(|| format!("{}: catching up with {}", new.name, old.name))?;
                    p.status(
                        "Caught up",
                        format!("{} has everything {} wrote", new.name, old.name),
                    );
                }
                Err(e) => p.warn(format!(
                    "{}: its database does not answer ({e:#}): not fenced",
                    old.name
                )),
            }
        }
        protocol::call(&new_r, &DbPromote {})
            .await
            .with_context(|| format!("{}: promoting", new.name))?;
        p.status("Promoted", format!("{} is the primary, writable", new.name));
        for r in others {
            let rr = ssh::connect(r, p.clone()).await?;
            let res = protocol::call(&rr, start_replica).await;
            let _ = rr.close().await;
            res.with_context(|| format!("{}: pointing at {}", r.name, new.name))?;
            p.status(
                "Repointed",
                format!("{} replicates from {}", r.name, new.name),
            );
        }
        if let (Some(o), true) = (&old_r, fenced) {
            match protocol::call(o, start_replica).await {
                Ok(_) => p.status(
                    "Repointed",
                    format!("{} replicates from {}", old.name, new.name),
                ),
                Err(e) => p.warn(format!(
                    "{}: could not replicate from {} ({e:#}): the next apply seeds it",
                    old.name, new.name
                )),
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = new_r.close().await;
    if let Some(o) = old_r {
        let _ = o.close().await;
    }
    result
}

/// Writes the inventory change (--write-inventory), or fails saying it must be made.
fn record(
    args: &DbPromoteArgs,
    p: &Printer,
    path: &std::path::Path,
    (old, new): (&Host, &Host),
    edited: &str,
) -> Result<Outcome> {
    if args.write_inventory {
        std::fs::write(path, edited).with_context(|| format!("writing {}", path.display()))?;
        p.status(
            "Wrote",
            format!("{}: {} is now the db-primary", path.display(), new.name),
        );
    } else {
        p.warn(format!(
            "make the inventory change above in {} (or pass --write-inventory), then run apply",
            path.display()
        ));
    }
    if !args.write_inventory {
        bail!("the database was promoted, but the inventory still names {} as db-primary: apply refuses until it is changed", old.name);
    }
    Ok(Outcome::Success)
}
