//! `db restore` without a way to lose data. The backup is verified end to end before any
//! host is touched (its record's checksum and size, the dump's trailer, GTID position,
//! server version and database); the primary's data is saved to a safety backup first;
//! the backup loads into a scratch database, binary-logged so that every replica builds
//! the same; only a complete load is switched in, by one RENAME TABLE (all tables or
//! none) that the replicas apply from the binary log too. A failure before that
//! statement drops the scratch database: the primary and the replicas keep their data.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::backup::dump_to_file;
use super::dump::{self, BackupRecord, DumpFacts, Piece, VersionCheck};
use crate::output::Printer;
use crate::protocol;
use crate::protocol::database::{
    DbCatchUp, DbRestoreAbort, DbRestoreCheck, DbRestorePrepare, DbRestoreSwap, DbWaitReplica,
    RestoreFacts,
};
use crate::remote::Remote;

/// A backup file read whole and verified against its record.
pub struct Backup {
    pub file: PathBuf,
    pub sql: Vec<u8>,
    pub record: BackupRecord,
    pub facts: DumpFacts,
}

impl Backup {
    /// Reads `file` and its record and checks them for a restore into `database`: every
    /// problem found is listed in the error. Touches no host.
    pub fn read(file: &Path, database: &str) -> Result<Backup> {
        let mut sql = Vec::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        )
        .read_to_end(&mut sql)
        .with_context(|| format!("{}: not a gzip backup made by `db backup`", file.display()))?;
        let record_file = dump::record_path(file);
        let text = std::fs::read_to_string(&record_file).with_context(|| {
            format!(
                "{}: its record {} cannot be read, so the backup cannot be verified (every \
                 `db backup` writes one beside the file)",
                file.display(),
                record_file.display()
            )
        })?;
        let record: BackupRecord = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a backup record", record_file.display()))?;
        let facts = dump::facts_of(&sql);
        let problems = dump::problems(&record, &facts, database);
        if !problems.is_empty() {
            bail!(
                "{} is not restored: nothing was changed on any host:\n  - {}",
                file.display(),
                problems.join("\n  - ")
            );
        }
        Ok(Backup {
            file: file.to_path_buf(),
            sql,
            record,
            facts,
        })
    }

    fn gtid(&self) -> &str {
        self.facts.gtid.as_deref().unwrap_or("")
    }

    fn version(&self) -> &str {
        self.facts.server_version.as_deref().unwrap_or("?")
    }
}

/// The primary, its connection, and the names one restore uses.
pub struct Target<'a> {
    pub remote: &'a dyn Remote,
    pub database: &'a str,
    /// Each replica that must apply the restore, connected.
    pub replicas: Vec<&'a dyn Remote>,
    /// Where the safety backup goes, and a failed load's whole message.
    pub safety: PathBuf,
    pub log: PathBuf,
    /// `DB__restore_STAMP` and `DB__replaced_STAMP`.
    pub scratch: String,
    pub old: String,
}

impl<'a> Target<'a> {
    /// Names from the digits of a UTC time stamp (`2026-12-03T15:17:06Z`:
    /// `foobar__restore_20261203151706`); the safety backup beside the restored file.
    pub fn new(
        remote: &'a dyn Remote,
        database: &'a str,
        replicas: Vec<&'a dyn Remote>,
        file: &Path,
        stamp: &str,
    ) -> Result<Target<'a>> {
        let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
        let scratch = format!("{database}__restore_{digits}");
        let old = format!("{database}__replaced_{digits}");
        if old.len() > 64 {
            bail!("the database name `{database}` is too long for a restore's scratch names (64 characters)");
        }
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(Target {
            remote,
            database,
            replicas,
            safety: dir.join(format!("{database}-before-restore-{digits}.sql.gz")),
            log: dir.join(format!("{database}-restore-{digits}.error.log")),
            scratch,
            old,
        })
    }

    /// The restore's three database names, as the requests carry them.
    fn names(&self) -> (String, String, String) {
        (
            self.database.to_string(),
            self.scratch.clone(),
            self.old.clone(),
        )
    }
}

/// The steps of a restore, in order, for the dry run and the log.
pub fn steps(b: &Backup, t: &Target) -> Vec<String> {
    let replicas: Vec<&str> = t.replicas.iter().map(|r| r.name()).collect();
    vec![
        format!(
            "verified {}: {} bytes of SQL matching its record (sha256 {}), complete (`-- Dump completed`), \
             from {} (server {}) at GTID {}",
            b.file.display(), b.facts.bytes, &b.facts.sha256[..12], b.record.host, b.version(), b.gtid()
        ),
        format!("save a safety backup of {}'s database {} to {}", t.remote.name(), t.database, t.safety.display()),
        format!(
            "load the backup into a new database {} on {} (binary-logged: the replicas build it too); {} is not touched",
            t.scratch, t.remote.name(), t.database
        ),
        format!(
            "switch with one RENAME TABLE: the tables {} into {}, the previous ones out (then dropped); \
             the replicas apply the same statement",
            b.facts.tables.join(", "), t.database
        ),
        match replicas.is_empty() {
            true => "no replica to wait for".to_string(),
            false => format!("wait until {} applied the restore (GTID)", replicas.join(", ")),
        },
    ]
}

/// What the primary said before the restore: read-only checks, nothing written.
pub async fn check_target(b: &Backup, t: &Target<'_>, p: &Printer) -> Result<RestoreFacts> {
    let host = t.remote.name();
    let request = DbRestoreCheck {
        database: t.database.to_string(),
    };
    let live = protocol::call(t.remote, &request)
        .await
        .with_context(|| format!("{host}: reading the database server's state"))?;
    match dump::version_check(b.version(), &live.version) {
        VersionCheck::Same => {}
        VersionCheck::Warn(m) => p.warn(format!("{host}: {m}")),
        VersionCheck::Refuse(m) => bail!("{host}: not restored: {m}"),
    }
    if live.read_only {
        bail!("{host} is read-only: it is not a primary (check the inventory's db-primary)");
    }
    if !t.replicas.is_empty() && !live.log_bin {
        bail!("{host} has no binary log: its replicas could not follow a restore");
    }
    if !live.unmovable.is_empty() {
        bail!(
            "{host}: the database {} holds {}: RENAME TABLE cannot move them, so the restore cannot \
             switch all at once (nothing changed)",
            t.database,
            live.unmovable.join(", ")
        );
    }
    for left in &live.leftovers {
        p.warn(format!(
            "{host}: database {left} was left by a restore that did not finish (a __restore_ one \
             holds a backup being loaded, a __replaced_ one the data a restore replaced); look, \
             then DROP DATABASE `{left}`"
        ));
    }
    for r in &t.replicas {
        protocol::call(*r, &DbWaitReplica { timeout_s: 5 })
            .await
            .with_context(|| {
                format!(
                "{}: replication is not running, and a restore reaches the replicas through it; \
                     repair it first (foobar-infra status names the cause); nothing changed",
                r.name()
            )
            })?;
    }
    Ok(live)
}

/// The restore itself, after [`check_target`]: safety backup, load, switch, replicas.
/// Answers the restored tables' row counts.
pub async fn restore(b: &Backup, t: &Target<'_>, p: &Printer) -> Result<Value> {
    let host = t.remote.name();
    if t.safety.exists() {
        bail!("{} already exists: not overwritten", t.safety.display());
    }
    p.status(
        "Saving",
        format!("a safety backup of {host}'s database {}", t.database),
    );
    let safety = dump_to_file(t.remote, t.database, &t.safety)
        .await
        .with_context(|| format!("{host}: the safety backup failed, nothing was restored"))?;
    p.status(
        "Saved",
        format!(
            "safety backup {} ({} bytes of SQL, GTID {}): restore it with `db restore` to go back",
            t.safety.display(),
            safety.bytes,
            safety.gtid.as_deref().unwrap_or("?")
        ),
    );
    let unchanged = format!(
        "{} is unchanged on {host} and its replicas; safety backup: {}",
        t.database,
        t.safety.display()
    );
    load(b, t, p)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{unchanged}"))?;
    p.status(
        "Switching",
        format!("{host}: restored tables into {}", t.database),
    );
    let (database, scratch, old) = t.names();
    let request = DbRestoreSwap {
        database,
        scratch,
        old,
        tables: b.facts.tables.clone(),
        lock_wait_s: 10,
    };
    let swap = protocol::call(t.remote, &request).await.map_err(|e| {
        anyhow::anyhow!("{host}: switching to the restored tables failed: {e:#}\n{unchanged}")
    })?;
    let gtid = swap.gtid_binlog_pos;
    // The replicas replay the whole load: two minutes, and a second per 2 MB beyond.
    let timeout_s = 120 + b.facts.bytes / (2 << 20);
    for r in &t.replicas {
        let request = DbCatchUp {
            gtid: gtid.clone(),
            timeout_s,
        };
        protocol::call(*r, &request).await.with_context(|| {
            format!(
                "{}: did not apply the restore from {host} (GTID {gtid}); {host} is restored; \
                     the replica catches up when replication runs (foobar-infra status)",
                r.name()
            )
        })?;
        p.status(
            "Replicated",
            format!("{}: the restore applied (GTID {gtid})", r.name()),
        );
    }
    Ok(serde_json::to_value(swap.rows)?)
}

/// Streams the backup into the scratch database; on failure the scratch database is
/// dropped, and the client's whole message is kept in a file beside the safety backup.
async fn load(b: &Backup, t: &Target<'_>, p: &Printer) -> Result<()> {
    let host = t.remote.name();
    let (database, scratch, old) = t.names();
    let request = DbRestorePrepare {
        database,
        scratch,
        old,
    };
    protocol::call(t.remote, &request)
        .await
        .with_context(|| format!("{host}: creating the scratch database {}", t.scratch))?;
    p.status(
        "Loading",
        format!(
            "{} into {host}'s scratch database {}",
            b.file.display(),
            t.scratch
        ),
    );
    let mut stdin: crate::remote::Input<'_> = Box::new(tokio::io::empty());
    for piece in dump::retarget(&b.sql, t.database, &t.scratch) {
        stdin = Box::new(stdin.chain(std::io::Cursor::new(match piece {
            Piece::Same(s) => std::borrow::Cow::Borrowed(s),
            Piece::New(v) => std::borrow::Cow::Owned(v),
        })));
    }
    let out = t
        .remote
        .exec_io(&["mariadb"], stdin, None, "database restore")
        .await;
    let failure = match out {
        Ok(o) if o.status == Some(0) => return Ok(()),
        Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
        Err(e) => format!("{e:#}"),
    };
    let (database, scratch, old) = t.names();
    let request = DbRestoreAbort {
        database,
        scratch,
        old,
    };
    let abort = protocol::call(t.remote, &request).await;
    let (first, cut) = dump::client_error(&failure);
    let mut msg = format!("{host}: loading the backup failed:\n{first}");
    if cut {
        match crate::private_file::write(&t.log, failure.as_bytes()) {
            Ok(()) => msg += &format!("\n(the whole message: {})", t.log.display()),
            Err(e) => msg += &format!("\n(the whole message could not be saved: {e:#})"),
        }
    }
    if let Err(e) = abort {
        msg += &format!(
            "\nthe scratch database {} could not be dropped ({e:#}): drop it by hand",
            t.scratch
        );
    }
    bail!(msg)
}
