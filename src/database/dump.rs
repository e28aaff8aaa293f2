//! What a `mariadb-dump` stream says about itself, read without running it: the server
//! version of its header, the GTID position it records (near the top on MariaDB 10.x,
//! deferred to the end on 11.x), its database and tables, and whether it ends with the
//! `-- Dump completed` trailer; the `.json` record `db backup` writes beside a backup;
//! and the checks a restore makes of both before anything touches a server. Pure.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record `db backup` writes beside a backup (`FILE.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub schema: u32,
    pub kind: String,
    pub host: String,
    pub database: String,
    /// The GTID position of the dump (None in records made before it was read right).
    pub gtid: Option<String>,
    /// The `-- Server version` of the dump's header (absent in older records).
    #[serde(default)]
    pub server_version: Option<String>,
    pub created: String,
    /// Bytes of SQL (the gzip's content).
    pub bytes: u64,
    pub sha256_sql: String,
    pub file: PathBuf,
}

pub const RECORD_KIND: &str = "foobar-infra-db-backup";

/// Where the record of a backup file is: `FILE.json`.
pub fn record_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// What a dump stream says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpFacts {
    pub bytes: u64,
    pub sha256: String,
    /// From `-- Server version\t11.8.9-MariaDB-...`.
    pub server_version: Option<String>,
    /// From `[-- ]SET GLOBAL gtid_slave_pos='...'` (Some("") for an empty position).
    pub gtid: Option<String>,
    /// From each `-- Current Database: `NAME``.
    pub databases: Vec<String>,
    /// From each `-- Table structure for table `NAME``.
    pub tables: Vec<String>,
    /// The databases named by `USE` statements.
    pub uses: Vec<String>,
    /// Views, triggers, routines and events ("view recent", "trigger t_items", ...).
    pub others: Vec<String>,
    /// The last non-empty line is `-- Dump completed ...`.
    pub completed: bool,
}

/// "view v", "trigger t", "procedure p", "function f" or "event e" for the line of a
/// dump that defines one (mariadb-dump's own forms).
fn not_a_table(line: &str) -> Option<String> {
    const DROPS: [(&str, &str); 3] = [
        ("/*!50003 DROP PROCEDURE IF EXISTS ", "procedure"),
        ("/*!50003 DROP FUNCTION IF EXISTS ", "function"),
        ("/*!50106 DROP EVENT IF EXISTS ", "event"),
    ];
    for (prefix, kind) in DROPS {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Some(format!("{kind} {}", backquoted(rest)?));
        }
    }
    if let Some(rest) = line.strip_prefix("-- Final view structure for view ") {
        return Some(format!("view {}", backquoted(rest)?));
    }
    let (_, rest) = line
        .strip_prefix("/*!50003 CREATE*/")?
        .split_once("/*!50003 TRIGGER ")?;
    let name = backquoted(rest).or_else(|| rest.split_whitespace().next().map(str::to_string))?;
    Some(format!("trigger {name}"))
}

/// Reads a dump stream chunk by chunk (a backup being written, or a whole file), keeping
/// only the start of each line: data lines (INSERTs) can be megabytes long.
pub struct DumpScanner {
    sha: Sha256,
    bytes: u64,
    line: Vec<u8>,
    facts: DumpFacts,
}

/// How much of a line is looked at: every line the scanner reads is short.
const LINE_PREFIX: usize = 512;

impl Default for DumpScanner {
    fn default() -> Self {
        DumpScanner {
            sha: Sha256::new(),
            bytes: 0,
            line: Vec::with_capacity(LINE_PREFIX),
            facts: DumpFacts::default(),
        }
    }
}

impl DumpScanner {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.sha.update(chunk);
        self.bytes += chunk.len() as u64;
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            self.keep(&chunk[..i]);
            self.end_line();
            chunk = &chunk[i + 1..];
        }
        self.keep(chunk);
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_PREFIX.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        if line.is_empty() {
            return;
        }
        let f = &mut self.facts;
        f.completed = line.starts_with("-- Dump completed");
        if let Some(v) = line.strip_prefix("-- Server version") {
            f.server_version = v.split_whitespace().next().map(str::to_string);
        } else if let Some(g) = gtid_of_line(&line) {
            f.gtid = Some(g);
        } else if let Some(rest) = line.strip_prefix("-- Current Database: ") {
            f.databases.extend(backquoted(rest));
        } else if let Some(rest) = line.strip_prefix("-- Table structure for table ") {
            f.tables.extend(backquoted(rest));
        } else if let Some(rest) = line.strip_prefix("USE ") {
            f.uses.extend(backquoted(rest));
        } else if let Some(other) = not_a_table(&line) {
            f.others.push(other);
        }
    }

    pub fn finish(mut self) -> DumpFacts {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.facts.bytes = self.bytes;
        self.facts.sha256 = hex::encode(self.sha.finalize());
        self.facts
    }
}

/// The facts of a whole dump in memory.
pub fn facts_of(sql: &[u8]) -> DumpFacts {
    let mut s = DumpScanner::default();
    s.feed(sql);
    s.finish()
}

/// The position of `SET GLOBAL gtid_slave_pos='0-1-5';`, commented out or not.
fn gtid_of_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("-- ").unwrap_or(line);
    let rest = rest.strip_prefix("SET GLOBAL gtid_slave_pos=")?;
    let rest = rest.strip_prefix('\'')?;
    Some(rest[..rest.find('\'')?].to_string())
}

/// The name in `` `na``me` `` (a doubled backquote is one), if the text starts with one.
fn backquoted(text: &str) -> Option<String> {
    let mut chars = text.strip_prefix('`')?.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        if c == '`' {
            if chars.peek() == Some(&'`') {
                chars.next();
            } else {
                return Some(name);
            }
        }
        name.push(c);
    }
    None
}

/// Everything wrong with a backup and its record, for a restore into `database`; empty
/// when it can be restored. Each problem is a sentence the user can act on.
pub fn problems(record: &BackupRecord, facts: &DumpFacts, database: &str) -> Vec<String> {
    let mut out = Vec::new();
    if record.kind != RECORD_KIND {
        out.push(format!(
            "its record is of kind {:?}, not {RECORD_KIND:?}",
            record.kind
        ));
    }
    if !record.sha256_sql.eq_ignore_ascii_case(&facts.sha256) {
        out.push(format!(
            "checksum mismatch: the record says sha256 {}, the SQL in the file hashes to {}: \
             the file is not the backup its record describes",
            record.sha256_sql, facts.sha256
        ));
    }
    if record.bytes != facts.bytes {
        out.push(format!(
            "size mismatch: the record says {} bytes of SQL, the file holds {}",
            record.bytes, facts.bytes
        ));
    }
    if !facts.completed {
        out.push(
            "the dump does not end with `-- Dump completed`: it is incomplete (cut short, \
             or mariadb-dump did not finish)"
                .to_string(),
        );
    }
    out.extend(gtid_problem(record, facts));
    out.extend(version_problem(record, facts));
    out.extend(database_problems(record, facts, database));
    out
}

fn gtid_problem(record: &BackupRecord, facts: &DumpFacts) -> Option<String> {
    match (&record.gtid, &facts.gtid) {
        (_, None) => Some(
            "the dump names no GTID position (the `SET GLOBAL gtid_slave_pos` line that \
             `db backup` dumps carry: MariaDB 10 writes it near the top, MariaDB 11 at the end)"
                .to_string(),
        ),
        (Some(r), Some(d)) if r != d => Some(format!(
            "GTID mismatch: the record says {r}, the dump says {d}"
        )),
        _ => None,
    }
}

fn version_problem(record: &BackupRecord, facts: &DumpFacts) -> Option<String> {
    match (&record.server_version, &facts.server_version) {
        (_, None) => Some("the dump has no `-- Server version` header".to_string()),
        (Some(r), Some(d)) if r != d => Some(format!(
            "server version mismatch: the record says {r}, the dump's header {d}"
        )),
        _ => None,
    }
}

fn database_problems(record: &BackupRecord, facts: &DumpFacts, database: &str) -> Vec<String> {
    let mut out = Vec::new();
    if record.database != database {
        out.push(format!(
            "the backup is of database `{}`, the inventory's is `{database}`",
            record.database
        ));
    }
    // A dump with views names its database twice (the views come last).
    let mut named = facts.databases.clone();
    named.dedup();
    if named != [database] {
        out.push(format!(
            "the dump should hold the one database `{database}`, it holds [{}]",
            named.join(", ")
        ));
    }
    if !facts.others.is_empty() {
        out.push(format!(
            "the backup holds {}: `db restore` switches tables all at once with RENAME TABLE, \
             which cannot move these between databases; restore it by hand",
            facts.others.join(", ")
        ));
    }
    if let Some(other) = facts.uses.iter().find(|u| *u != database) {
        out.push(format!(
            "the dump switches to another database (USE `{other}`)"
        ));
    }
    out
}

/// A server version: flavor and release series, e.g. MariaDB 11.8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub mariadb: bool,
    pub series: (u32, u32),
    pub text: String,
}

impl ServerVersion {
    /// `11.8.9-MariaDB-0+deb13u1`, `10.11.19-MariaDB-log`, `8.0.36` (MySQL).
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let text = text.trim();
        let mut nums = text.split(|c: char| !c.is_ascii_digit());
        let major = nums.next()?.parse().ok()?;
        let minor = nums.next()?.parse().ok()?;
        Some(ServerVersion {
            mariadb: text.contains("MariaDB"),
            series: (major, minor),
            text: text.to_string(),
        })
    }

    fn label(&self) -> String {
        let flavor = if self.mariadb { "MariaDB" } else { "MySQL" };
        format!("{flavor} {}.{}", self.series.0, self.series.1)
    }
}

/// Whether a dump from server `dump` may be loaded into server `server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionCheck {
    Same,
    /// Loads, with a note for the user (an older series into a newer one).
    Warn(String),
    Refuse(String),
}

pub fn version_check(dump: &str, server: &str) -> VersionCheck {
    let (Some(d), Some(s)) = (ServerVersion::parse(dump), ServerVersion::parse(server)) else {
        return VersionCheck::Refuse(format!(
            "cannot read the server versions (dump {dump:?}, server {server:?})"
        ));
    };
    if d.mariadb != s.mariadb {
        return VersionCheck::Refuse(format!(
            "the dump comes from {} ({}), the server is {} ({}): only a dump of the same \
             flavor is restored",
            d.label(),
            d.text,
            s.label(),
            s.text
        ));
    }
    if d.series == s.series {
        VersionCheck::Same
    } else if d.series < s.series {
        VersionCheck::Warn(format!(
            "the dump comes from {} ({}), the server runs {} ({}): loading into a newer \
             series is supported",
            d.label(),
            d.text,
            s.label(),
            s.text
        ))
    } else {
        VersionCheck::Refuse(format!(
            "the dump comes from {} ({}), newer than the server's {} ({}): an older server \
             skips the newer one's versioned comments (/*M!NNNNNN ... */) without an error, \
             so the restore could silently differ; restore on a server of {} or newer",
            d.label(),
            d.text,
            s.label(),
            s.text,
            d.label()
        ))
    }
}

/// The dump's bytes with its `CREATE DATABASE` and `USE` lines for `database` pointed at
/// `scratch` instead (the `CREATE DATABASE` line becomes a comment: the scratch database
/// is made beforehand). The line count is kept, so a client's "at line N" is the
/// backup's line N. Pieces borrow from `sql` where nothing changes.
pub fn retarget<'a>(sql: &'a [u8], database: &str, scratch: &str) -> Vec<Piece<'a>> {
    let use_line = format!("USE `{database}`;");
    let create = format!("`{database}`");
    let mut pieces = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at < sql.len() {
        let end = sql[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(sql.len(), |i| at + i);
        let line = &sql[at..end];
        let replacement = if line.trim_ascii_end() == use_line.as_bytes() {
            Some(format!("USE `{scratch}`;"))
        } else if line.starts_with(b"CREATE DATABASE ")
            && line.windows(create.len()).any(|w| w == create.as_bytes())
        {
            Some(format!(
                "-- CREATE DATABASE `{database}` skipped: restored into `{scratch}` first"
            ))
        } else {
            None
        };
        if let Some(r) = replacement {
            pieces.push(Piece::Same(&sql[start..at]));
            pieces.push(Piece::New(r.into_bytes()));
            start = end;
        }
        at = end + 1;
    }
    pieces.push(Piece::Same(&sql[start.min(sql.len())..]));
    pieces.retain(|p| !p.bytes().is_empty());
    pieces
}

/// A part of a retargeted dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Same(&'a [u8]),
    New(Vec<u8>),
}

impl Piece<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Piece::Same(b) => b,
            Piece::New(b) => b,
        }
    }
}

/// At most `max_lines` lines of `text`, each cut at `width` characters, and whether
/// anything was left out: a failed statement's message can quote a whole INSERT.
pub fn bounded(text: &str, max_lines: usize, width: usize) -> (String, bool) {
    let text = text.trim();
    let mut cut = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == max_lines {
            cut = true;
            break;
        }
        match line.char_indices().nth(width) {
            Some((at, _)) => {
                cut = true;
                out.push(format!(
                    "{}... ({} more bytes)",
                    &line[..at],
                    line.len() - at
                ));
            }
            None => out.push(line.to_string()),
        }
    }
    (out.join("\n"), cut)
}

/// The part of a `mariadb` client's error output that matters, bounded: its `ERROR`
/// lines and the start of the failing statement (the 11.x client echoes the whole
/// statement first, which for an INSERT of a dump is megabytes); and whether anything
/// was left out.
pub fn client_error(text: &str) -> (String, bool) {
    let text = text.trim();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR ")).collect();
    if errors.is_empty() {
        return bounded(text, 5, 300);
    }
    let (mut out, cut) = bounded(&errors.join("\n"), 5, 300);
    let mut lines = text.lines();
    if lines.next() == Some("--------------") {
        if let Some(first) = lines.next() {
            let (start, _) = bounded(first, 1, 120);
            out.push_str(&format!("\n(in the statement that starts: {start})"));
        }
    }
    (out, cut || errors.len() < text.lines().count())
}

#[cfg(test)]
mod tests;
