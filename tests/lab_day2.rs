//! End-to-end tests of day-two operations on the lab (issue 9): reviewed plans,
//! the managed-file manifest (files that leave the plan are removed, others never
//! touched), and the apply history. They need Docker (see tests/common).

mod common;
#[path = "support/overrides.rs"]
mod overrides;

use std::time::Duration;

use common::*;

fn setup() -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = lab()?;
    let out = cli(&["apply", &inv()]);
    assert_eq!(out.status.code(), Some(0), "baseline apply: {}", text(&out));
    Some(guard)
}

fn inv() -> String {
    lab_inventory().display().to_string()
}

#[test]
fn a_plan_is_refused_after_drift_and_a_fresh_one_applies_once() {
    let Some(_g) = setup() else { return };
    let variant = lab_variant("plan-body", |t| {
        format!("{t}nginx:\n  client_max_body_size: 13m\n")
    });
    let v = variant.to_str().unwrap();
    let plan = root().join("lab/.state/plan.json");
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

#[test]
fn a_role_taken_off_removes_exactly_its_files() {
    let Some(_g) = setup() else { return };
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
        http_get(LB, "/health")
            .map(|r| r.status == 200)
            .unwrap_or(false),
        "site still serves"
    );

    // Back to the lab's shape: the replica returns and replicates again.
    exec(
        "web-02",
        &["rm", "-f", "/etc/mysql/mariadb.conf.d/99-by-hand.cnf"],
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

#[test]
fn history_lists_an_applied_and_a_failed_run() {
    let Some(_g) = setup() else { return };
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

#[test]
fn a_backup_restores_into_fresh_database_hosts_and_replicas_follow() {
    let Some(_g) = setup() else { return };
    for i in 0..25 {
        let r = http_post(WEB1, "/items", &format!("text=kept+{i}")).unwrap();
        assert_eq!(r.status, 201);
    }
    let rows = sql("web-01", "SELECT COUNT(*) FROM foobar.items");
    let file = root().join("lab/.state/backup.sql.gz");
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
    let r = http_post(WEB2, "/items", "text=after+restore").unwrap();
    assert_eq!(r.status, 201);
    assert!(wait_until(Duration::from_secs(5), || {
        sql("web-02", "SELECT COUNT(*) FROM foobar.items")
            == sql("web-01", "SELECT COUNT(*) FROM foobar.items")
    }));
    assert_eq!(cli(&["status", &inv()]).status.code(), Some(0));
}
