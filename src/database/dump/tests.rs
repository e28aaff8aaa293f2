//! Unit tests of reading and checking database dumps (src/database/dump.rs).

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
