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
mod tests {
    use super::*;

    /// The shape of a MariaDB 11.8 dump (`--gtid --master-data=2 --databases foobar`):
    /// the GTID position deferred to the end.
    const DUMP_118: &str = "/*M!999999\\- enable the sandbox mode */ \n\
-- MariaDB dump 10.20-11.8.9-MariaDB, for debian-linux-gnu (x86_64)\n\
--\n\
-- Host: localhost    Database: foobar\n\
-- ------------------------------------------------------\n\
-- Server version\t11.8.9-MariaDB-0+deb13u1 from Debian-log\n\
\n\
-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n\
--\n\
-- Current Database: `foobar`\n\
--\n\
\n\
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `foobar` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n\
\n\
USE `foobar`;\n\
\n\
--\n\
-- Table structure for table `items`\n\
--\n\
\n\
DROP TABLE IF EXISTS `items`;\n\
CREATE TABLE `items` (\n\
  `id` bigint(20) NOT NULL AUTO_INCREMENT,\n\
  PRIMARY KEY (`id`)\n\
) ENGINE=InnoDB;\n\
INSERT INTO `items` VALUES (1),(2);\n\
--\n\
-- Table structure for table `odd``name`\n\
--\n\
\n\
-- SET GLOBAL gtid_slave_pos='0-182976779-13';\n\
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;\n\
\n\
-- Dump completed on 2026-12-03 15:17:06\n";

    fn record_of(sql: &str) -> BackupRecord {
        let f = facts_of(sql.as_bytes());
        BackupRecord {
            schema: 1,
            kind: RECORD_KIND.into(),
            host: "web-01".into(),
            database: "foobar".into(),
            gtid: f.gtid.clone(),
            server_version: f.server_version.clone(),
            created: "2026-12-03T15:17:06Z".into(),
            bytes: f.bytes,
            sha256_sql: f.sha256,
            file: "b.sql.gz".into(),
        }
    }

    #[test]
    fn a_dump_tells_its_version_gtid_database_tables_and_trailer() {
        let f = facts_of(DUMP_118.as_bytes());
        assert_eq!(
            f.server_version.as_deref(),
            Some("11.8.9-MariaDB-0+deb13u1")
        );
        assert_eq!(f.gtid.as_deref(), Some("0-182976779-13"));
        assert_eq!(f.databases, ["foobar"]);
        assert_eq!(f.tables, ["items", "odd`name"]);
        assert_eq!(f.uses, ["foobar"]);
        assert!(f.completed);
        assert_eq!(f.bytes, DUMP_118.len() as u64);
    }

    #[test]
    fn the_gtid_near_the_top_of_a_10_11_dump_and_uncommented_is_read_too() {
        let top = "-- Server version\t10.11.19-MariaDB-0+deb12u1-log\n\
-- SET GLOBAL gtid_slave_pos='0-1-7';\n-- Dump completed on x\n";
        assert_eq!(facts_of(top.as_bytes()).gtid.as_deref(), Some("0-1-7"));
        let live = "SET GLOBAL gtid_slave_pos='0-1-8,1-2-3';\n";
        assert_eq!(
            facts_of(live.as_bytes()).gtid.as_deref(),
            Some("0-1-8,1-2-3")
        );
        let empty = "-- SET GLOBAL gtid_slave_pos='';\n";
        assert_eq!(facts_of(empty.as_bytes()).gtid.as_deref(), Some(""));
    }

    #[test]
    fn chunks_split_anywhere_read_the_same_and_long_lines_are_cut() {
        let whole = facts_of(DUMP_118.as_bytes());
        for size in [1, 3, 7, 64] {
            let mut s = DumpScanner::default();
            for c in DUMP_118.as_bytes().chunks(size) {
                s.feed(c);
            }
            assert_eq!(s.finish(), whole, "chunks of {size}");
        }
        let long = format!(
            "INSERT INTO `t` VALUES ('{}');\n-- Dump completed\n",
            "x".repeat(100_000)
        );
        let f = facts_of(long.as_bytes());
        assert!(f.completed);
        assert_eq!(f.bytes, long.len() as u64);
    }

    #[test]
    fn a_valid_backup_has_no_problems() {
        let r = record_of(DUMP_118);
        assert_eq!(
            problems(&r, &facts_of(DUMP_118.as_bytes()), "foobar"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn half_a_dump_is_incomplete_and_fails_its_checksum() {
        let r = record_of(DUMP_118);
        let half = &DUMP_118.as_bytes()[..DUMP_118.len() / 2];
        let p = problems(&r, &facts_of(half), "foobar");
        let all = p.join("\n");
        assert!(all.contains("checksum mismatch"), "{all}");
        assert!(all.contains("size mismatch"), "{all}");
        assert!(
            all.contains("does not end with `-- Dump completed`"),
            "{all}"
        );
        assert!(all.contains("no GTID position"), "{all}");
        // Half a dump with a record made for it: the trailer alone refuses it.
        let own = record_of(std::str::from_utf8(half).unwrap());
        let p = problems(&own, &facts_of(half), "foobar");
        assert!(p.iter().any(|m| m.contains("-- Dump completed")), "{p:?}");
    }

    #[test]
    fn a_wrong_checksum_gtid_or_version_in_the_record_is_named() {
        let f = facts_of(DUMP_118.as_bytes());
        let mut r = record_of(DUMP_118);
        r.sha256_sql = "0".repeat(64);
        r.gtid = Some("0-1-1".into());
        r.server_version = Some("10.11.19-MariaDB".into());
        let all = problems(&r, &f, "foobar").join("\n");
        assert!(
            all.contains(&format!(
                "checksum mismatch: the record says sha256 {}",
                "0".repeat(64)
            )),
            "{all}"
        );
        assert!(
            all.contains("GTID mismatch: the record says 0-1-1, the dump says 0-182976779-13"),
            "{all}"
        );
        assert!(all.contains("server version mismatch"), "{all}");
        // Records made before the GTID and version were read: the checksum covers them.
        let mut old = record_of(DUMP_118);
        old.gtid = None;
        old.server_version = None;
        assert!(problems(&old, &f, "foobar").is_empty());
    }

    #[test]
    fn a_backup_of_another_database_is_refused() {
        let r = record_of(DUMP_118);
        let all = problems(&r, &facts_of(DUMP_118.as_bytes()), "shop").join("\n");
        assert!(
            all.contains("the backup is of database `foobar`, the inventory's is `shop`"),
            "{all}"
        );
        // Views come at the end, after the database is named a second time.
        let views = DUMP_118.replace(
            "-- SET GLOBAL",
            "-- Current Database: `foobar`\nUSE `foobar`;\n-- SET GLOBAL",
        );
        assert!(problems(&record_of(&views), &facts_of(views.as_bytes()), "foobar").is_empty());
        let other = DUMP_118.replace("USE `foobar`;", "USE `mysql`;");
        let all = problems(&record_of(&other), &facts_of(other.as_bytes()), "foobar").join("\n");
        assert!(all.contains("USE `mysql`"), "{all}");
    }

    #[test]
    fn views_triggers_routines_and_events_are_named_and_refused() {
        // The lines mariadb-dump 11.8 writes for each (--routines --triggers --events).
        let extra = "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t_items BEFORE INSERT ON items FOR EACH ROW SET NEW.text = NEW.text \n\
/*!50106 DROP EVENT IF EXISTS `e1` */;\n\
/*!50003 DROP PROCEDURE IF EXISTS `p1` */;\n\
/*!50003 DROP FUNCTION IF EXISTS `f``1` */;\n\
-- Final view structure for view `recent`\n\
-- SET GLOBAL";
        let dump = DUMP_118.replace("-- SET GLOBAL", extra);
        let f = facts_of(dump.as_bytes());
        assert_eq!(
            f.others,
            [
                "trigger t_items",
                "event e1",
                "procedure p1",
                "function f`1",
                "view recent"
            ]
        );
        let all = problems(&record_of(&dump), &f, "foobar").join("\n");
        assert!(
            all.contains("the backup holds trigger t_items, event e1"),
            "{all}"
        );
        assert!(facts_of(DUMP_118.as_bytes()).others.is_empty());
    }

    #[test]
    fn the_record_reads_back_and_older_records_without_a_version_still_read() {
        let r = record_of(DUMP_118);
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(serde_json::from_str::<BackupRecord>(&text).unwrap(), r);
        let old = r#"{"bytes": 3929, "created": "2026-12-03T15:17:06Z", "database": "foobar",
            "file": "/tmp/a.sql.gz", "gtid": null, "host": "web-01",
            "kind": "foobar-infra-db-backup", "schema": 1, "sha256_sql": "ab"}"#;
        let r: BackupRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.gtid, r.server_version), (None, None));
        assert_eq!(
            record_path(Path::new("x/b.sql.gz")),
            Path::new("x/b.sql.gz.json")
        );
    }

    #[test]
    fn versions_of_one_series_load_older_into_newer_warns_newer_into_older_is_refused() {
        let v1011 = "10.11.19-MariaDB-0+deb12u1-log";
        let v118 = "11.8.9-MariaDB-0+deb13u1";
        assert_eq!(version_check(v118, "11.8.2-MariaDB"), VersionCheck::Same);
        assert!(
            matches!(version_check(v1011, v118), VersionCheck::Warn(m) if m.contains("MariaDB 10.11"))
        );
        assert!(
            matches!(version_check(v118, v1011), VersionCheck::Refuse(m) if m.contains("MariaDB 11.8 or newer"))
        );
        assert!(
            matches!(version_check("8.0.36", v118), VersionCheck::Refuse(m) if m.contains("MySQL 8.0"))
        );
        assert!(matches!(version_check("?", v118), VersionCheck::Refuse(_)));
        assert_eq!(
            ServerVersion::parse(v1011).unwrap().series,
            (10, 11),
            "10.11 is newer than 10.6, not a string comparison"
        );
        assert!(matches!(
            version_check("10.6.1-MariaDB", v1011),
            VersionCheck::Warn(_)
        ));
    }

    #[test]
    fn retargeting_points_the_dump_at_the_scratch_database_and_keeps_its_lines() {
        let pieces = retarget(DUMP_118.as_bytes(), "foobar", "foobar__restore_1");
        let out: Vec<u8> = pieces.iter().flat_map(|p| p.bytes().to_vec()).collect();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), DUMP_118.lines().count());
        assert!(out.contains("\nUSE `foobar__restore_1`;\n"), "{out}");
        assert!(!out.contains("USE `foobar`;"));
        assert!(
            !out.lines().any(|l| l.starts_with("CREATE DATABASE")),
            "{out}"
        );
        assert!(out.contains("-- CREATE DATABASE `foobar` skipped"));
        // Everything else is as it was, borrowed.
        assert_eq!(
            out.replace("USE `foobar__restore_1`;", "USE `foobar`;")
                .lines()
                .filter(|l| !l.contains("CREATE DATABASE"))
                .collect::<Vec<_>>(),
            DUMP_118
                .lines()
                .filter(|l| !l.contains("CREATE DATABASE"))
                .collect::<Vec<_>>()
        );
        assert!(pieces.iter().filter(|p| matches!(p, Piece::New(_))).count() == 2);
        // Another database's lines are left alone (problems() refuses such a dump).
        let other = retarget(b"USE `shop`;\n", "foobar", "s");
        assert_eq!(other, [Piece::Same(b"USE `shop`;\n")]);
    }

    #[test]
    fn bounded_output_keeps_the_first_lines_and_cuts_long_ones() {
        let insert = format!(
            "ERROR 1064 (42000) at line 647: syntax near '{}'",
            "x".repeat(278_000)
        );
        let (text, cut) = bounded(&insert, 5, 300);
        assert!(cut);
        assert!(text.len() < 400, "{}", text.len());
        assert!(text.starts_with("ERROR 1064 (42000) at line 647"));
        assert!(text.ends_with("more bytes)"));
        let many: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let (text, cut) = bounded(&many, 3, 300);
        assert_eq!((text.as_str(), cut), ("line 0\nline 1\nline 2", true));
        assert_eq!(bounded("short\n", 3, 300), ("short".to_string(), false));
        // A cut never splits a character.
        let (text, _) = bounded(&"é".repeat(10), 1, 4);
        assert!(text.starts_with("éééé..."), "{text}");
    }

    #[test]
    fn a_client_error_shows_its_error_line_not_the_echoed_statement() {
        // The MariaDB 11.8 client echoes the failing statement (--print-query-on-error).
        let rows: String = (1..7633)
            .map(|i| format!("({i},'h{i}','2026-12-03 15:23:39'),\n"))
            .collect();
        let err = format!(
            "--------------\nINSERT INTO `visits` VALUES\n{rows}(7633,'h7632','2026-12-03 15\n\
             --------------\n\nERROR 1064 (42000) at line 88: You have an error in your SQL \
             syntax; check the manual that corresponds to your MariaDB server version for the \
             right syntax to use near ''2026-12-03 15' at line 7633\n"
        );
        let (text, cut) = client_error(&err);
        assert!(cut);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.starts_with("ERROR 1064 (42000) at line 88: "),
            "{text}"
        );
        assert!(text.ends_with("(in the statement that starts: INSERT INTO `visits` VALUES)"));
        // The 10.11 client prints the error alone: nothing left out.
        let short = "ERROR 1146 (42S02) at line 90: Table 'foobar__restore_1.nope' doesn't exist\n";
        assert_eq!(client_error(short), (short.trim().to_string(), false));
        // Anything else: its first lines.
        assert_eq!(
            client_error("ssh: broken pipe"),
            ("ssh: broken pipe".to_string(), false)
        );
    }
}
