//! End-to-end test of a database primary failover on the lab (issue 6): the primary's
//! database dies, `db promote` makes the replica the primary and rewrites the inventory,
//! `apply` moves the application's writes to it and turns the old primary into a
//! replica. Needs Docker (see tests/lab/main.rs).

use std::time::Duration;

use crate::common::*;

lab_tests!(
    promote_web_02_after_web_01_database_died,
    replica_state_is_repaired_and_a_diverged_replica_is_reseeded,
);

fn promote_web_02_after_web_01_database_died() {
    lab();
    let base = lab_inventory().display().to_string();
    assert_eq!(cli(&["apply", &base]).status.code(), Some(0));
    for i in 0..5 {
        assert_eq!(
            http_post(lb(), "/items", &format!("text=before+failover+{i}"))
                .unwrap()
                .status,
            201
        );
    }
    let inv = lab_variant("failover", |t| t.to_string());
    let v = inv.to_str().unwrap();
    let before_text = std::fs::read_to_string(&inv).unwrap();

    exec("web-01", &["service", "mariadb", "stop"]);
    assert!(wait_until(Duration::from_secs(10), || http_post(
        lb(),
        "/items",
        "text=x"
    )
    .map(|r| r.status != 201)
    .unwrap_or(true)));

    let dry = cli(&["db", "promote", v, "web-02", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    let steps = String::from_utf8_lossy(&dry.stdout);
    assert!(
        steps.contains("on web-02: stop replication, forget it, make it writable"),
        "{steps}"
    );
    assert!(
        steps.contains("-    roles: [web, db-primary]")
            && steps.contains("+    roles: [web, db-replica]"),
        "{steps}"
    );
    assert_eq!(
        std::fs::read_to_string(&inv).unwrap(),
        before_text,
        "a dry run changes nothing"
    );
    assert_eq!(sql("web-02", "SELECT @@read_only"), "1");

    let out = cli(&["db", "promote", v, "web-02", "--write-inventory"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after_text = std::fs::read_to_string(&inv).unwrap();
    assert_eq!(
        after_text,
        before_text
            .replacen("roles: [web, db-primary]", "roles: [web, @@]", 1)
            .replacen("roles: [web, db-replica]", "roles: [web, db-primary]", 1)
            .replacen("roles: [web, @@]", "roles: [web, db-replica]", 1),
        "only the two role words changed"
    );
    assert_eq!(sql("web-02", "SELECT @@read_only"), "0");

    let out = cli(&["apply", v]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for target in [lb(), web1(), web2()] {
        let r = http_post(target, "/items", "text=after+failover").unwrap();
        assert_eq!(r.status, 201, "write through {target}: {}", r.body);
    }
    assert!(
        wait_until(Duration::from_secs(30), || cli(&["status", v])
            .status
            .code()
            == Some(0)),
        "{}",
        text(&cli(&["status", v]))
    );
    let status = cli(&["status", "--json", v]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let web2 = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web-02")
        .unwrap();
    assert_eq!(web2["database"]["role"], "primary", "{web2:#}");
    assert_eq!(web2["database"]["read_only"], false);
    // The old primary came back as a replica of web-02 and has every row.
    assert!(wait_until(Duration::from_secs(10), || {
        sql("web-01", "SELECT COUNT(*) FROM foobar.items")
            == sql("web-02", "SELECT COUNT(*) FROM foobar.items")
    }));
    // The lab's own inventory now disagrees with the live primary: apply refuses.
    let refused = cli(&["apply", &base]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the live database primary is web-02"),
        "{}",
        text(&refused)
    );

    // And back, the same way, with both databases up.
    let out = cli(&["db", "promote", v, "web-01", "--write-inventory"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Caught up"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&inv).unwrap(), before_text);
    let out = cli(&["apply", &base]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(http_post(lb(), "/items", "text=back").unwrap().status, 201);
    // Healthy again once the restarted servers pass their checks.
    assert!(
        wait_until(Duration::from_secs(30), || cli(&["status", &base])
            .status
            .code()
            == Some(0)),
        "{}",
        text(&cli(&["status", &base]))
    );
}

/// One field of SHOW SLAVE STATUS on a lab host ("" when not there).
fn replica_field(host: &str, field: &str) -> String {
    exec(host, &["mariadb", "-e", "SHOW SLAVE STATUS\\G"])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == field).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn replicating(host: &str) -> bool {
    replica_field(host, "Slave_IO_Running") == "Yes"
        && replica_field(host, "Slave_SQL_Running") == "Yes"
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Issue 19: the replica's state is desired state. `read_only` OFF and a thread stopped
/// by hand are changes that diff shows and apply puts right (without writing anything
/// to either binary log); a replica that diverged (a write on it, then a conflicting
/// one on the primary) stops diff and apply, naming the server's error and
/// `db reseed`, which brings it back replicating with the primary's rows; and `status`
/// right after an apply that restarted the primary does not call the replica's
/// reconnection a problem. On either host kind (MariaDB 10.11 and 11.8).
fn replica_state_is_repaired_and_a_diverged_replica_is_reseeded() {
    lab();
    let inv = lab_inventory().display().to_string();
    eprintln!("web-02: {}", host_os("web-02"));
    apply_ok(&inv, &[]);
    assert!(wait_until(Duration::from_secs(15), || replicating(
        "web-02"
    )));
    let gtid = |h: &str| sql(h, "SELECT @@gtid_current_pos");

    // read_only OFF on the replica: a pending change, put back by apply.
    sql("web-02", "SET GLOBAL read_only=0");
    let (g1, g2) = (gtid("web-01"), gtid("web-02"));
    let diff = cli(&["diff", &inv]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(
        String::from_utf8_lossy(&diff.stdout)
            .contains("database: replica of web-01: read_only back ON"),
        "{}",
        text(&diff)
    );
    apply_ok(&inv, &[]);
    assert_eq!(sql("web-02", "SELECT @@read_only"), "1");
    assert_eq!(
        (gtid("web-01"), gtid("web-02")),
        (g1, g2),
        "the repair wrote nothing to a binary log"
    );
    assert_eq!(cli(&["diff", &inv]).status.code(), Some(0));

    // Both threads stopped by hand: started again.
    sql("web-02", "STOP SLAVE");
    let diff = cli(&["diff", &inv]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let shown = String::from_utf8_lossy(&diff.stdout).to_string();
    assert!(
        shown.contains("start the IO thread (stopped, no error)")
            && shown.contains("start the SQL thread (stopped, no error)"),
        "{shown}"
    );
    apply_ok(&inv, &[]);
    assert!(replicating("web-02"));
    assert_eq!(cli(&["diff", &inv]).status.code(), Some(0));

    // Diverged: a row written on the replica, then a write on the primary.
    for i in 0..5 {
        let r = http_post(lb(), "/items", &format!("text=before+divergence+{i}")).unwrap();
        assert_eq!(r.status, 201);
    }
    sql(
        "web-02",
        "SET GLOBAL read_only=0; INSERT INTO foobar.items (text, host) VALUES ('written on the replica', 'web-02')",
    );
    assert_eq!(
        http_post(lb(), "/items", "text=conflict").unwrap().status,
        201
    );
    assert!(
        wait_until(Duration::from_secs(10), || replica_field(
            "web-02",
            "Slave_SQL_Running"
        ) == "No"),
        "the replica's SQL thread did not stop"
    );
    let errno = replica_field("web-02", "Last_SQL_Errno");
    assert!(
        ["1950", "1062"].contains(&errno.as_str()),
        "GTID out of order or a duplicate key, not {errno}"
    );
    let reseed = format!("foobar-infra db reseed {inv} web-02");
    let before = managed_hashes();
    for command in ["diff", "apply"] {
        let out = cli(&[command, &inv]);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", text(&out));
        let err = stderr(&out);
        assert!(
            err.contains(
                "web-02: the replica has diverged from web-01: SQL thread stopped on error "
            ) && err.contains(&format!("error {errno} "))
                && err.contains(&format!("`{reseed}`")),
            "{command}: {}",
            text(&out)
        );
    }
    assert!(stderr(&cli(&["apply", &inv])).contains("nothing was changed on any host"));
    assert_eq!(managed_hashes(), before);
    assert_eq!(replica_field("web-02", "Slave_SQL_Running"), "No");
    let json = cli(&["diff", "--json", &inv]);
    assert_eq!(json.status.code(), Some(1), "{}", text(&json));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["errors"][0]["kind"], "replica-diverged", "{doc:#}");
    assert_eq!(doc["errors"][0]["errno"].to_string(), errno);
    assert_eq!(doc["errors"][0]["repair"], reseed.as_str());

    // The repair command, as printed.
    let dry = cli(&["db", "reseed", &inv, "web-02", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry));
    assert_eq!(replica_field("web-02", "Slave_SQL_Running"), "No");
    let out = cli(&["db", "reseed", &inv, "web-02"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(replicating("web-02"));
    assert_eq!(sql("web-02", "SELECT @@read_only"), "1");
    assert_eq!(
        http_post(lb(), "/items", "text=after+reseed")
            .unwrap()
            .status,
        201
    );
    let counts = |h: &str| {
        sql(
            h,
            "SELECT (SELECT COUNT(*) FROM foobar.items), (SELECT COUNT(*) FROM foobar.visits)",
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || counts("web-01")
            == counts("web-02")),
        "primary {} replica {}",
        counts("web-01"),
        counts("web-02")
    );
    assert_eq!(
        sql(
            "web-02",
            "SELECT COUNT(*) FROM foobar.items WHERE text='written on the replica'"
        ),
        "0"
    );
    assert_eq!(cli(&["diff", &inv]).status.code(), Some(0));

    // An apply that restarts the primary: status at once is healthy (the replica's
    // IO thread reconnects within its grace).
    exec(
        "web-01",
        &[
            "sh",
            "-c",
            "echo '# drift' >> /etc/mysql/mariadb.conf.d/60-foobar.cnf",
        ],
    );
    let out = apply_ok(&inv, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mariadb restart"),
        "{}",
        text(&out)
    );
    let status = cli(&["status", &inv]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
}
