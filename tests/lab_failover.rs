//! End-to-end test of a database primary failover on the lab (issue 6): the primary's
//! database dies, `db promote` makes the replica the primary and rewrites the inventory,
//! `apply` moves the application's writes to it and turns the old primary into a
//! replica. Needs Docker (see tests/common).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn promote_web_02_after_web_01_database_died() {
    let Some(_g) = lab() else { return };
    let base = lab_inventory().display().to_string();
    assert_eq!(cli(&["apply", &base]).status.code(), Some(0));
    for i in 0..5 {
        assert_eq!(
            http_post(LB, "/items", &format!("text=before+failover+{i}"))
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
        LB, "/items", "text=x"
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
    for target in [LB, WEB1, WEB2] {
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
    assert_eq!(http_post(LB, "/items", "text=back").unwrap().status, 201);
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
