//! `foobar-infra db backup` and `db restore`: a consistent dump of the primary (or a
//! replica) streamed over the tool's SSH connection into a local gzip file, with its
//! GTID position recorded beside it; and the way back, streamed into the primary, then
//! every replica reseeded from it. Nothing is written to a host's disk; no password is
//! in any argv (the dump runs as root over the local socket).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::remote::{limit, secret_names};
use super::{load_tested_and_render, runtime, Outcome};
use crate::cli::{DbBackupArgs, DbRestoreArgs};
use crate::database;
use crate::output::Printer;
use crate::plan::{DbRole, HostPlan};
use crate::remote::{ssh, Remote};
use crate::secrets::Secrets;

fn sidecar(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The GTID position a `mariadb-dump --gtid --master-data=2` names near its top.
fn gtid_of(head: &str) -> Option<String> {
    let line = head.lines().find(|l| l.contains("gtid_slave_pos"))?;
    let start = line.find('\'')? + 1;
    let end = start + line[start..].find('\'')?;
    Some(line[start..end].to_string())
}

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
    let db = source
        .db
        .as_ref()
        .expect("a database host")
        .database
        .clone();
    let out_path = args.out.clone();
    let tmp_path = out_path.with_extension("partial");
    // 0600, new, not through a symlink (and not removed below if it was already there).
    let file = crate::private_file::create(&tmp_path)?;
    let (bytes, gtid, sha) = runtime()?
        .block_on(async {
            let r = ssh::connect(&source.host, p.clone()).await?;
            p.status(
                "Dumping",
                format!(
                    "{} database {db} from {}",
                    if source.db.as_ref().unwrap().role == DbRole::Primary {
                        "primary"
                    } else {
                        "replica"
                    },
                    source.name()
                ),
            );
            let (writer, mut reader) = tokio::io::duplex(1 << 20);
            let argv = [
                "mariadb-dump",
                "--single-transaction",
                "--gtid",
                "--master-data=2",
                "--routines",
                "--triggers",
                "--events",
                "--databases",
                db.as_str(),
            ];
            let dump = r.exec_io(
                &argv,
                Box::new(tokio::io::empty()),
                Some(Box::new(writer)),
                "database backup",
            );
            let write = async move {
                use sha2::Digest;
                let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
                let mut sha = sha2::Sha256::new();
                let mut head = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    if head.len() < 64 * 1024 {
                        head.extend_from_slice(&buf[..n.min(64 * 1024 - head.len())]);
                    }
                    sha.update(&buf[..n]);
                    gz.write_all(&buf[..n])?;
                    total += n as u64;
                }
                gz.finish()?.sync_all()?;
                Ok::<_, anyhow::Error>((
                    total,
                    gtid_of(&String::from_utf8_lossy(&head)),
                    hex::encode(sha.finalize()),
                ))
            };
            let (d, w) = tokio::join!(dump, write);
            let _ = r.close().await;
            let d = d?;
            let w = w?;
            if d.status != Some(0) {
                bail!(
                    "{}: mariadb-dump failed: {}",
                    source.name(),
                    String::from_utf8_lossy(&d.stderr).trim()
                );
            }
            Ok(w)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp_path);
        })?;
    std::fs::rename(&tmp_path, &out_path)
        .with_context(|| format!("writing {}", out_path.display()))?;
    let meta = json!({
        "schema": 1, "kind": "foobar-infra-db-backup", "host": source.name(), "database": db,
        "gtid": gtid, "created": crate::engine::chrono_now(), "bytes": bytes, "sha256_sql": sha,
        "file": out_path,
    });
    let record = serde_json::to_string_pretty(&meta)? + "\n";
    crate::private_file::write(&sidecar(&out_path), record.as_bytes())?;
    if p.json {
        p.json_line(&json!({"schema": 1, "command": "db-backup", "backup": meta}));
    } else {
        p.status(
            "Saved",
            format!(
                "{} ({bytes} bytes of SQL, gzip), GTID position {}",
                out_path.display(),
                gtid.as_deref().unwrap_or("unknown")
            ),
        );
    }
    Ok(Outcome::Success)
}

pub fn restore(args: &DbRestoreArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (inventory, plan) = load_tested_and_render(
        &args.remote.inventory,
        args.remote.templates.templates.as_deref(),
    )?;
    let plan = limit(plan, &args.remote.limit)?;
    let meta: serde_json::Value = std::fs::read_to_string(sidecar(&args.file))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // Read the whole file once now: a corrupt backup fails here, before any change.
    let mut sql = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?,
    )
    .read_to_end(&mut sql)
    .with_context(|| {
        format!(
            "{}: not a gzip backup made by `db backup`",
            args.file.display()
        )
    })?;
    let primary = plan
        .db_primary()
        .context("the inventory has no db-primary (or --limit left it out)")?;
    let replicas: Vec<&HostPlan> = plan
        .hosts
        .iter()
        .filter(|h| h.db.as_ref().is_some_and(|d| d.role == DbRole::Replica))
        .collect();
    let steps = [
        format!(
            "load {} ({} bytes of SQL, from {} at GTID {}) into the primary {}: the database {} is replaced",
            args.file.display(),
            sql.len(),
            meta["host"].as_str().unwrap_or("?"),
            meta["gtid"].as_str().unwrap_or("?"),
            primary.name(),
            primary.db.as_ref().unwrap().database
        ),
        format!(
            "reseed {} from {} (streamed dump) and restart replication by GTID",
            if replicas.is_empty() { "no replica".to_string() } else { replicas.iter().map(|h| h.name()).collect::<Vec<_>>().join(", ") },
            primary.name()
        ),
    ];
    if !args.yes {
        for (i, s) in steps.iter().enumerate() {
            p.out(format!("{}. {s}", i + 1));
        }
        p.status(
            "Dry run",
            "nothing changed; run again with --yes to restore",
        );
        return Ok(Outcome::ChangesPending);
    }
    let secrets = Secrets::load(&inventory, &secret_names(&plan))?;
    runtime()?.block_on(async {
        let source = ssh::connect(&primary.host, p.clone()).await?;
        let result = async {
            p.status(
                "Restoring",
                format!("{} into {}", args.file.display(), primary.name()),
            );
            let out = source
                .exec_io(
                    &["mariadb"],
                    Box::new(std::io::Cursor::new(sql)),
                    None,
                    "database restore",
                )
                .await?;
            if out.status != Some(0) {
                bail!(
                    "{}: loading the backup failed: {}",
                    primary.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            for hp in &replicas {
                let r = ssh::connect(&hp.host, p.clone()).await?;
                let res = database::seed(&source, &r, hp.db.as_ref().unwrap(), &secrets, p).await;
                let _ = r.close().await;
                res.with_context(|| format!("{}: reseeding from {}", hp.name(), primary.name()))?;
                p.status(
                    "Replicating",
                    format!("{} from {}", hp.name(), primary.name()),
                );
            }
            Ok(())
        }
        .await;
        let _ = source.close().await;
        result
    })?;
    p.status("Restored", format!("{} and its replicas", primary.name()));
    Ok(Outcome::Success)
}
