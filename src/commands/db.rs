//! `foobar-infra db backup` and `db restore`: a consistent dump of the primary (or a
//! replica) streamed over the tool's SSH connection into a local gzip file, with its
//! record beside it (checksum, GTID position, server version); and the way back,
//! verified first and switched in all at once (src/database/restore.rs), which the
//! replicas follow through replication. Nothing is written to a host's disk; no password
//! is in any argv (the dump runs as root over the local socket).

use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use super::remote::limit;
use super::{load_tested_and_render, runtime, Outcome};
use crate::cli::{DbBackupArgs, DbRestoreArgs};
use crate::database::backup::dump_to_file;
use crate::database::restore::{self, Backup, Target};
use crate::output::Printer;
use crate::plan::{DbRole, HostPlan};
use crate::remote::{ssh, Remote};

pub fn backup(args: &DbBackupArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (_inv, plan) = load_tested_and_render(
        &args.remote.inventory,
        args.remote.templates.templates.as_deref(),
    )?;
    let source: &HostPlan = match &args.from {
        Some(name) => plan
            .host(name)
            .filter(|h| h.db.is_some())
            .with_context(|| format!("--from {name}: no database host of that name"))?,
        None => plan
            .db_primary()
            .context("the inventory has no db-primary")?,
    };
    let db = source.db.as_ref().expect("a database host");
    let record = runtime()?.block_on(async {
        let r = ssh::connect(&source.host, p.clone()).await?;
        let role = match db.role {
            DbRole::Primary => "primary",
            DbRole::Replica => "replica",
        };
        p.status(
            "Dumping",
            format!("{role} database {} from {}", db.database, source.name()),
        );
        let record = dump_to_file(&r, &db.database, &args.out).await;
        let _ = r.close().await;
        record
    })?;
    if p.json {
        p.json_line(&json!({"schema": 1, "command": "db-backup", "backup": record}));
    } else {
        p.status(
            "Saved",
            format!(
                "{} ({} bytes of SQL, gzip), GTID position {}, server {}",
                args.out.display(),
                record.bytes,
                record.gtid.as_deref().unwrap_or("unknown"),
                record.server_version.as_deref().unwrap_or("unknown")
            ),
        );
    }
    Ok(Outcome::Success)
}

pub fn restore(args: &DbRestoreArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (_inventory, plan) = load_tested_and_render(
        &args.remote.inventory,
        args.remote.templates.templates.as_deref(),
    )?;
    let plan = limit(plan, &args.remote.limit)?;
    let primary = plan
        .db_primary()
        .context("the inventory has no db-primary (or --limit left it out)")?;
    let database = &primary.db.as_ref().expect("a database host").database;
    // Verified whole before any host is touched: a bad backup stops here.
    let backup = Backup::read(&args.file, database)?;
    let replicas: Vec<&HostPlan> = plan
        .hosts
        .iter()
        .filter(|h| h.db.as_ref().is_some_and(|d| d.role == DbRole::Replica))
        .collect();
    runtime()?.block_on(async {
        let source = ssh::connect(&primary.host, p.clone()).await?;
        let mut conns = Vec::new();
        for hp in &replicas {
            match ssh::connect(&hp.host, p.clone()).await {
                Ok(c) => conns.push(c),
                Err(e) => {
                    let _ = source.close().await;
                    return Err(
                        e.context(format!("{}: a replica must follow the restore", hp.name()))
                    );
                }
            }
        }
        let remotes: Vec<&dyn Remote> = conns.iter().map(|c| c as &dyn Remote).collect();
        let result = restore_on(&backup, &source, remotes, database, args.yes, p).await;
        for c in conns {
            let _ = c.close().await;
        }
        let _ = source.close().await;
        result
    })
}

async fn restore_on(
    backup: &Backup,
    primary: &dyn Remote,
    replicas: Vec<&dyn Remote>,
    database: &str,
    yes: bool,
    p: &Printer,
) -> Result<Outcome> {
    let stamp = crate::run::info::chrono_now();
    let t = Target::new(primary, database, replicas, &backup.file, &stamp)?;
    restore::check_target(backup, &t, p).await?;
    if !yes {
        for (i, s) in restore::steps(backup, &t).iter().enumerate() {
            p.out(format!("{}. {s}", i + 1));
        }
        p.status(
            "Dry run",
            "nothing changed; run again with --yes to restore",
        );
        return Ok(Outcome::ChangesPending);
    }
    let rows = restore::restore(backup, &t, p).await?;
    let counts: Vec<String> = rows
        .as_object()
        .into_iter()
        .flatten()
        .map(|(table, n)| format!("{table} {n} rows"))
        .collect();
    if p.json {
        p.json_line(
            &json!({"schema": 1, "command": "db-restore", "host": primary.name(),
            "database": database, "file": backup.file, "rows": rows, "safety_backup": t.safety}),
        );
    }
    p.status(
        "Restored",
        format!(
            "{}'s database {database} from {} ({}); safety backup kept: {}",
            primary.name(),
            backup.file.display(),
            counts.join(", "),
            t.safety.display()
        ),
    );
    Ok(Outcome::Success)
}
