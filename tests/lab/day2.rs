//! End-to-end tests of day-two operations on the lab (issue 9): reviewed plans,
//! the managed-file manifest (files that leave the plan are removed, others never
//! touched), and the apply history. They need Docker (see tests/lab/main.rs).

use std::time::Duration;

use crate::common::*;
use crate::overrides;

lab_tests!(
    a_plan_is_refused_after_drift_and_a_fresh_one_applies_once,
    a_role_taken_off_removes_exactly_its_files,
    a_web_role_taken_off_puts_back_the_distributions_nginx_conf,
    history_lists_an_applied_and_a_failed_run,
    a_backup_restores_into_fresh_database_hosts_and_replicas_follow,
    half_a_backup_or_a_wrong_checksum_is_refused_before_the_primary_is_touched,
    a_restore_failing_midway_keeps_the_data_and_its_safety_backup_restores,
);

fn setup() {
    lab();
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "baseline apply: {}", text(&out));
}

fn inv() -> String {
    lab_inventory().display().to_string()
}

fn a_plan_is_refused_after_drift_and_a_fresh_one_applies_once() {
    setup();
    let variant = lab_variant("plan-body", |t| {
        format!("{t}nginx:\n  client_max_body_size: 13m\n")
    });
    let v = variant.to_str().unwrap();
    let plan = state_dir().join("plan.json");
    let p = plan.to_str().unwrap();

    let out = cli(&["plan", v, "--out", p]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "plan with changes: {}",
        text(&out)
    );
    let reviewed = cli(&["diff", p]);
    assert_eq!(reviewed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&reviewed.stdout).contains("+    client_max_body_size 13m;"));

    // Someone edits a planned file by hand after the review.
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            "echo '# late edit' >> /etc/nginx/sites-foobar/www.foobar.com.conf",
        ],
    );
    let before = managed_hashes();
    let out = cli(&["apply", p]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "web-01: /etc/nginx/sites-foobar/www.foobar.com.conf changed since the plan was made"
        ),
        "{stderr}"
    );
    assert_eq!(before, managed_hashes(), "nothing changed anywhere");

    let out = cli(&["plan", v, "--out", p]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cli(&["apply", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(exec(
        "web-02",
        &["cat", "/etc/nginx/sites-foobar/www.foobar.com.conf"]
    )
    .contains("client_max_body_size 13m;"));
    let again = cli(&["apply", p]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "a plan applied twice: {}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 of 3 hosts changed"),
        "{}",
        text(&again)
    );

    // A plan older than the limit is refused.
    std::thread::sleep(Duration::from_millis(1100));
    let old = cli(&["apply", p, "--max-plan-age", "0"]);
    assert_eq!(old.status.code(), Some(1), "{}", text(&old));
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("more than --max-plan-age 0 s"),
        "{}",
        text(&old)
    );
    assert_eq!(cli(&["apply", &inv()]).status.code(), Some(0));
}

fn a_role_taken_off_removes_exactly_its_files() {
    setup();
    let variant = lab_variant("no-replica", |t| {
        t.replace("roles: [web, db-replica]", "roles: [web]")
    });
    let v = variant.to_str().unwrap();
    exec(
        "web-02",
        &[
            "sh",
            "-c",
            "echo '[mysqld]' > /etc/mysql/mariadb.conf.d/99-by-hand.cnf",
        ],
    );

    let diff = cli(&["diff", v]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout);
    assert!(
        stdout.contains("delete /etc/mysql/mariadb.conf.d/60-foobar.cnf (mariadb)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mariadb stop (no longer planned on this host)"),
        "{stdout}"
    );
    assert!(!stdout.contains("99-by-hand"), "{stdout}");

    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        remote_sha("web-02", "/etc/mysql/mariadb.conf.d/60-foobar.cnf"),
        "",
        "deleted"
    );
    assert_ne!(
        remote_sha("web-02", "/etc/mysql/mariadb.conf.d/99-by-hand.cnf"),
        "",
        "the hand-made file stays"
    );
    assert_eq!(cli(&["diff", v]).status.code(), Some(0), "in sync after");
    assert!(
        http_get(lb(), "/health")
            .map(|r| r.status == 200)
            .unwrap_or(false),
        "site still serves"
    );

    // Back to the lab's shape: the replica returns and replicates again.
    exec(
        "web-02",
        &["rm", "-f", "/etc/mysql/mariadb.conf.d/99-by-hand.cnf"],
    );
    let diff = cli(&["diff", &inv()]);
    let stdout = String::from_utf8_lossy(&diff.stdout);
    assert!(
        stdout.contains("== topology") && stdout.contains("+ replica web-02"),
        "the replica role coming back is part of the topology: {stdout}"
    );
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(wait_until(Duration::from_secs(30), || {
        let st = String::from_utf8_lossy(
            &exec_raw("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]).stdout,
        )
        .to_string();
        st.contains("Slave_SQL_Running: Yes")
    }));
}

/// The md5 of the distribution's /etc/nginx/nginx.conf (dpkg's record of the conffile)
/// and of the file on the host.
fn nginx_conf_md5s(host: &str) -> (String, String) {
    let dpkg = exec(
        host,
        &["dpkg-query", "-W", "-f=${Conffiles}\\n", "nginx-common"],
    );
    let shipped = dpkg
        .lines()
        .find_map(|l| l.trim().strip_prefix("/etc/nginx/nginx.conf "))
        .unwrap_or_else(|| panic!("dpkg knows nginx.conf: {dpkg}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let here = exec(host, &["md5sum", "/etc/nginx/nginx.conf"]);
    (
        shipped,
        here.split_whitespace().next().unwrap_or("").to_string(),
    )
}

fn a_web_role_taken_off_puts_back_the_distributions_nginx_conf() {
    setup();
    let (shipped, managed) = nginx_conf_md5s("web-02");
    assert_ne!(shipped, managed, "the tool's nginx.conf is in place first");
    let variant = lab_variant("no-web-02", |t| {
        t.replace("roles: [web, db-replica]", "roles: [db-replica]")
    });
    let v = variant.to_str().unwrap();
    let diff = cli(&["diff", v]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let stdout = String::from_utf8_lossy(&diff.stdout);
    assert!(
        stdout.contains("delete /etc/nginx/nginx.conf (nginx)") && stdout.contains("# put back"),
        "{stdout}"
    );
    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (shipped, now) = nginx_conf_md5s("web-02");
    assert_eq!(now, shipped, "the distribution's nginx.conf is back");
    assert_eq!(cli(&["diff", v]).status.code(), Some(0), "in sync after");

    // The role comes back: the tool's nginx.conf again, the original still kept.
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(nginx_conf_md5s("web-02").1, managed);
    assert!(wait_until(Duration::from_secs(20), || {
        http_get(lb(), "/health").is_ok_and(|r| r.status == 200)
    }));
}

fn history_lists_an_applied_and_a_failed_run() {
    setup();
    let ok = lab_variant("history-ok", |t| {
        format!("{t}nginx:\n  client_max_body_size: 14m\n")
    });
    let out = cli(&["apply", ok.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let dir = overrides::broken_nginx_site();
    let out = cli(&["apply", &inv(), "--templates", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let hist = cli(&["history", "--json", &inv(), "web-01", "--last", "2"]);
    assert_eq!(hist.status.code(), Some(0), "{}", text(&hist));
    let doc: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    let records = doc["hosts"][0]["records"].as_array().unwrap();
    let results: Vec<&str> = records
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["applied", "failed"], "{doc:#}");
    assert!(
        records[1]["error"].as_str().unwrap().contains("sixteen"),
        "{doc:#}"
    );
    assert_eq!(records[0]["inventory_hash"].as_str().unwrap().len(), 64);
    assert!(records[0]["user"].as_str().unwrap().contains('@'));

    let status = cli(&["status", "--json", &inv()]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let web1 = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web-01")
        .unwrap();
    assert_eq!(web1["last_apply"]["result"], "failed", "{web1:#}");
    let table = cli(&["history", &inv()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("failed"));
    assert_eq!(cli(&["apply", &inv()]).status.code(), Some(0));
}

fn a_backup_restores_into_fresh_database_hosts_and_replicas_follow() {
    setup();
    for i in 0..25 {
        let r = http_post(web1(), "/items", &format!("text=kept+{i}")).unwrap();
        assert_eq!(r.status, 201);
    }
    let rows = sql("web-01", "SELECT COUNT(*) FROM foobar.items");
    let file = state_dir().join("backup.sql.gz");
    let f = file.to_str().unwrap();
    let out = cli(&["db", "backup", &inv(), "--out", f]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{f}.json")).unwrap()).unwrap();
    assert!(meta["gtid"].as_str().unwrap().starts_with("0-"), "{meta:#}");
    for h in ["web-01", "web-02"] {
        let leftovers = exec(
            h,
            &[
                "sh",
                "-c",
                "find / -xdev -mmin -3 -name '*.sql*' -not -path '/srv/*' 2>/dev/null | wc -l",
            ],
        );
        assert_eq!(leftovers.trim(), "0", "{h}: nothing written to disk");
    }

    // The database hosts are wiped: new containers, empty databases.
    assert!(sh(&root().join("lab/down"), &["web-01", "web-02"])
        .status
        .success());
    let up = sh(&root().join("lab/up"), &["web-01", "web-02"]);
    assert!(up.status.success(), "{}", text(&up));
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sql("web-01", "SELECT COUNT(*) FROM foobar.items"), "0");

    let dry = cli(&["db", "restore", &inv(), f]);
    assert_eq!(dry.status.code(), Some(2), "dry run first: {}", text(&dry));
    assert_eq!(
        sql("web-01", "SELECT COUNT(*) FROM foobar.items"),
        "0",
        "the dry run changed nothing"
    );
    let out = cli(&["db", "restore", &inv(), f, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sql("web-01", "SELECT COUNT(*) FROM foobar.items"), rows);
    assert!(wait_until(Duration::from_secs(10), || sql(
        "web-02",
        "SELECT COUNT(*) FROM foobar.items"
    ) == rows));
    let st = exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    assert!(
        st.contains("Slave_IO_Running: Yes") && st.contains("Slave_SQL_Running: Yes"),
        "{st}"
    );
    let r = http_post(web2(), "/items", "text=after+restore").unwrap();
    assert_eq!(r.status, 201);
    assert!(wait_until(Duration::from_secs(5), || {
        sql("web-02", "SELECT COUNT(*) FROM foobar.items")
            == sql("web-01", "SELECT COUNT(*) FROM foobar.items")
    }));
    assert_eq!(cli(&["status", &inv()]).status.code(), Some(0));
}

/// Row counts and a digest of the application's data on a database host.
fn data_of(host: &str) -> String {
    sql(
        host,
        "SELECT (SELECT COUNT(*) FROM foobar.items), (SELECT COUNT(*) FROM foobar.visits), \
         (SELECT MD5(GROUP_CONCAT(id, text ORDER BY id)) FROM foobar.items)",
    )
}

/// The primary's data once the replica holds the same (both asserted equal).
fn settled_data() -> String {
    let primary = data_of("web-01");
    assert!(
        wait_until(Duration::from_secs(10), || data_of("web-02") == primary),
        "the replica holds {} and the primary {primary}",
        data_of("web-02")
    );
    primary
}

fn post_items(prefix: &str, n: usize) {
    for i in 0..n {
        let r = http_post(web1(), "/items", &format!("text={prefix}+{i}")).unwrap();
        assert_eq!(r.status, 201);
    }
}

/// A clean directory in the lab's state directory for a test's backups.
fn backup_dir(name: &str) -> std::path::PathBuf {
    let dir = state_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut sql = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut sql)
        .unwrap();
    sql
}

/// Writes `sql` gzipped to `path`, with a record beside it: `record` with the checksum
/// and size of `sql` when `own` (a record made for it), else `record` as it is.
fn write_backup(path: &std::path::Path, sql: &[u8], record: &serde_json::Value, own: bool) {
    use sha2::Digest;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(sql).unwrap();
    gz.finish().unwrap();
    let mut record = record.clone();
    if own {
        record["sha256_sql"] = hex::encode(sha2::Sha256::digest(sql)).into();
        record["bytes"] = sql.len().into();
    }
    std::fs::write(format!("{}.json", path.display()), record.to_string()).unwrap();
}

fn backup_record(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}.json", path.display())).unwrap())
        .unwrap()
}

/// Issue 19, acceptance 1: a valid gzip of half a backup (with the backup's record, or
/// with a record made for the half) and a whole backup whose record has a wrong checksum
/// are refused before anything reaches the primary: no remote command runs there, its
/// GTID position and the data of primary and replica stay as they were.
fn half_a_backup_or_a_wrong_checksum_is_refused_before_the_primary_is_touched() {
    setup();
    post_items("kept", 20);
    let before = settled_data();
    let dir = backup_dir("restore-refused");
    let full = dir.join("full.sql.gz");
    let out = cli(&["db", "backup", &inv(), "--out", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record = backup_record(&full);
    // MariaDB 11 (debian13) writes the position at the end of the dump, 10.11 at the top.
    assert!(
        record["gtid"].as_str().unwrap().starts_with("0-"),
        "{} on {}: {record:#}",
        host_os("web-01"),
        text(&out)
    );
    assert!(
        record["server_version"]
            .as_str()
            .unwrap()
            .contains("MariaDB"),
        "{record:#}"
    );
    for f in [full.clone(), dir.join("full.sql.gz.json")] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }

    let sql = gunzip(&full);
    let half = &sql[..sql.len() / 2];
    let mut wrong = record.clone();
    wrong["sha256_sql"] = "0".repeat(64).into();
    let cases = [
        (
            "half.sql.gz",
            half,
            &record,
            false,
            vec!["checksum mismatch", "does not end with `-- Dump completed`"],
        ),
        (
            "half-own.sql.gz",
            half,
            &record,
            true,
            vec!["does not end with `-- Dump completed`"],
        ),
        (
            "wrong-sum.sql.gz",
            &sql[..],
            &wrong,
            false,
            vec!["checksum mismatch: the record says sha256 0000"],
        ),
    ];
    for (name, content, rec, own, expected) in cases {
        let file = dir.join(name);
        write_backup(&file, content, rec, own);
        let gtid = sql_gtid("web-01");
        let t0 = docker_now();
        let out = cli(&["db", "restore", &inv(), file.to_str().unwrap(), "--yes"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for e in expected {
            assert!(stderr.contains(e), "{name}: {e:?} in {stderr}");
        }
        assert!(
            stderr.contains("nothing was changed on any host"),
            "{stderr}"
        );
        assert!(stderr.len() < 2000, "{name}: bounded output: {stderr}");
        assert_eq!(
            sshd_sessions_since("web-01", &t0),
            0,
            "{name}: the primary was not contacted"
        );
        assert_eq!(
            sql_gtid("web-01"),
            gtid,
            "{name}: nothing written on the primary"
        );
        assert_eq!(data_of("web-01"), before, "{name}: the primary's data");
        assert_eq!(data_of("web-02"), before, "{name}: the replica's data");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sql_gtid(host: &str) -> String {
    sql(host, "SELECT @@gtid_binlog_pos")
}

/// Issue 19, acceptance 2: a complete, valid dump made by hand whose last statement
/// fails (a duplicate key in a long INSERT, near the end) leaves the previous data on
/// the primary and the replica, no scratch database behind, a bounded message, and a
/// safety backup that restores the previous data.
fn a_restore_failing_midway_keeps_the_data_and_its_safety_backup_restores() {
    setup();
    post_items("in+backup", 10);
    let dir = backup_dir("restore-midway");
    let full = dir.join("full.sql.gz");
    let out = cli(&["db", "backup", &inv(), "--out", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The data moves on after the backup: this is what a failed restore must keep.
    post_items("after+backup", 7);
    let before = settled_data();

    let dump = String::from_utf8(gunzip(&full)).unwrap();
    let trailer = dump.rfind("\n-- Dump completed").expect("a complete dump") + 1;
    // 5,000 new rows, then the first one again: the statement fails on its last row.
    let mut ids: Vec<u32> = (1_000_001..=1_005_000).collect();
    ids.push(1_000_001);
    let rows: Vec<String> = ids
        .iter()
        .map(|i| format!("({i},'dup {i}','web-01','2026-12-03 15:00:00')"))
        .collect();
    let failing = format!(
        "{}INSERT INTO `items` VALUES\n{};\n{}",
        &dump[..trailer],
        rows.join(",\n"),
        &dump[trailer..]
    );
    let broken = dir.join("broken.sql.gz");
    write_backup(&broken, failing.as_bytes(), &backup_record(&full), true);

    let out = cli(&["db", "restore", &inv(), broken.to_str().unwrap(), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("loading the backup failed"), "{stderr}");
    assert!(stderr.contains("Duplicate entry"), "{stderr}");
    assert!(
        stderr.contains("foobar is unchanged on web-01 and its replicas"),
        "{stderr}"
    );
    assert!(
        stderr.len() < 3000,
        "bounded: {} bytes: {stderr}",
        stderr.len()
    );
    assert_eq!(data_of("web-01"), before, "the primary's data");
    assert_eq!(settled_data(), before, "the replica's data");
    for h in ["web-01", "web-02"] {
        assert_eq!(
            sql(h, "SHOW DATABASES LIKE 'foobar\\_\\_%'"),
            "",
            "{h}: no scratch database left"
        );
    }
    let slave = exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    assert!(slave.contains("Slave_SQL_Running: Yes"), "{slave}");

    // The safety backup taken first restores the data as it was before.
    let safety = stderr
        .lines()
        .find_map(|l| l.split("safety backup: ").nth(1))
        .expect("the safety backup's path")
        .trim()
        .to_string();
    post_items("after+failure", 3);
    let out = cli(&["db", "restore", &inv(), &safety, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(data_of("web-01"), before, "restored from the safety backup");
    assert_eq!(settled_data(), before);
    assert_eq!(cli(&["status", &inv()]).status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
