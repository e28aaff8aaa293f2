//! A consistent dump of a database host streamed over the tool's SSH connection into a
//! local gzip file (0600, new, never through a symlink; nothing written on the host),
//! read as it passes (checksum, GTID position, server version, trailer), with its record
//! beside it: what `db backup` saves, and the safety backup `db restore` takes first.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncReadExt;

use super::dump::{bounded, record_path, BackupRecord, DumpFacts, DumpScanner, RECORD_KIND};
use crate::remote::Remote;

/// Dumps `database` from `remote` into `out` (through `OUT.partial`, removed on failure)
/// and writes its record `OUT.json`. A dump that does not end with its trailer or names
/// no GTID position is an error, not a backup.
pub async fn dump_to_file(remote: &dyn Remote, database: &str, out: &Path) -> Result<BackupRecord> {
    let partial = out.with_extension("partial");
    // 0600, new, not through a symlink (and not removed below if it was already there).
    let file = crate::private_file::create(&partial)?;
    let facts = match dump_into(remote, database, file)
        .await
        .and_then(|f| complete(remote, f))
    {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    let record = BackupRecord {
        schema: 1,
        kind: RECORD_KIND.to_string(),
        host: remote.name().to_string(),
        database: database.to_string(),
        gtid: facts.gtid,
        server_version: facts.server_version,
        created: crate::run::info::chrono_now(),
        bytes: facts.bytes,
        sha256_sql: facts.sha256,
        file: out.to_path_buf(),
    };
    let text = serde_json::to_string_pretty(&record)? + "\n";
    crate::private_file::write(&record_path(out), text.as_bytes())?;
    Ok(record)
}

fn complete(remote: &dyn Remote, facts: DumpFacts) -> Result<DumpFacts> {
    if !facts.completed {
        bail!(
            "{}: the dump ended without its `-- Dump completed` line ({} bytes): not saved",
            remote.name(),
            facts.bytes
        );
    }
    if facts.gtid.is_none() {
        bail!(
            "{}: the dump names no GTID position (is binary logging on?): not saved",
            remote.name()
        );
    }
    Ok(facts)
}

/// Streams the dump into a gzip of `file`, reading its facts on the way.
async fn dump_into(remote: &dyn Remote, database: &str, file: std::fs::File) -> Result<DumpFacts> {
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    // --master-data=2: the position as a comment (the restore must not change it).
    let argv = [
        "mariadb-dump",
        "--single-transaction",
        "--gtid",
        "--master-data=2",
        "--routines",
        "--triggers",
        "--events",
        "--databases",
        database,
    ];
    let dump = remote.exec_io(
        &argv,
        Box::new(tokio::io::empty()),
        Some(Box::new(writer)),
        "database backup",
    );
    let write = async move {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut scanner = DumpScanner::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            scanner.feed(&buf[..n]);
            gz.write_all(&buf[..n])?;
        }
        gz.finish()?.sync_all()?;
        Ok::<_, anyhow::Error>(scanner.finish())
    };
    let (d, w) = tokio::join!(dump, write);
    let d = d?;
    let facts = w?;
    if d.status != Some(0) {
        let (text, _) = bounded(&String::from_utf8_lossy(&d.stderr), 10, 300);
        bail!("{}: mariadb-dump failed: {text}", remote.name());
    }
    Ok(facts)
}
