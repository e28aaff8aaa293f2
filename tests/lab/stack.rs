//! End-to-end tests of the whole stack on the lab (issue 5): MariaDB replication set up
//! and kept by `apply`, the application and its releases deployed rolling behind the
//! load balancer, `rollback`, and `status`. They need Docker (see tests/lab/main.rs).

use std::process::Output;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;

lab_tests!(
    a_row_written_through_the_app_reaches_the_replica_which_refuses_app_writes,
    a_second_apply_keeps_replication_exactly_as_it_is,
    a_restarted_replica_resumes_by_itself_and_status_says_healthy,
    a_wiped_replica_is_seeded_from_the_primary_without_secrets_in_argv,
    a_deploy_and_a_rollback_under_load_fail_no_request,
    status_reports_lag_and_backends_and_fails_on_a_stopped_sql_thread,
    the_agents_socket_sql_reads_what_the_mariadb_client_prints,
);

static FIRST_APPLY: OnceLock<Output> = OnceLock::new();

fn setup() {
    lab();
    let first = FIRST_APPLY.get_or_init(|| cli(&["apply", &inv()]));
    assert_eq!(
        first.status.code(),
        Some(0),
        "first apply on a fresh lab: {}",
        text(first)
    );
}

fn inv() -> String {
    lab_inventory().display().to_string()
}

fn apply_ok(inventory: &str) -> Output {
    let out = cli(&["apply", inventory]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "apply {inventory}: {}",
        text(&out)
    );
    no_secret_in(&out);
    out
}

fn no_secret_in(out: &Output) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in lab_secrets() {
        assert!(
            !all.contains(&s),
            "a secret value appears in the tool's output"
        );
    }
}

fn count(host: &str) -> i64 {
    sql(host, "SELECT COUNT(*) FROM foobar.items")
        .parse()
        .unwrap_or(-1)
}

fn replica_running() -> bool {
    let out = exec_raw("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    let st = String::from_utf8_lossy(&out.stdout);
    st.contains("Slave_IO_Running: Yes") && st.contains("Slave_SQL_Running: Yes")
}

fn a_row_written_through_the_app_reaches_the_replica_which_refuses_app_writes() {
    setup();
    apply_ok(&inv());
    for target in [lb(), web1(), web2()] {
        let r = http_post(target, "/items", "text=hello+from+the+test").expect("POST /items");
        assert_eq!(r.status, 201, "POST via {target}: {}", r.body);
    }
    let primary = count("web-01");
    assert!(primary >= 3);
    assert!(
        wait_until(Duration::from_secs(5), || count("web-02") == primary),
        "replica has {} rows, primary {primary}",
        count("web-02")
    );
    // Reads through web-02's application come from its local replica.
    let r = http_get(web2(), "/items/count").unwrap();
    assert!(
        r.body.contains(&format!("\"count\": {primary}"))
            || r.body.contains(&format!("\"count\":{primary}")),
        "{}",
        r.body
    );

    // The application's account cannot write on the replica.
    let pw = &lab_secrets()[0];
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            "-e",
            &format!("MYSQL_PWD={pw}"),
            &container("web-02"),
            "mariadb",
            "-u",
            "foobar",
            "-h",
            web2(),
        ])
        .args([
            "-e",
            "INSERT INTO foobar.items (text, host) VALUES ('x', 'test')",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a write on the replica was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read-only") || err.contains("read_only"),
        "{err}"
    );
    assert!(
        replica_running(),
        "the refused write did not break replication"
    );
}

fn a_second_apply_keeps_replication_exactly_as_it_is() {
    setup();
    apply_ok(&inv());
    let gtid = |h| sql(h, "SELECT @@gtid_current_pos");
    let threads = || {
        sql(
            "web-02",
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER='system user' ORDER BY ID",
        )
    };
    let before = (
        gtid("web-01"),
        gtid("web-02"),
        threads(),
        pidfile("web-02", "/run/mysqld/mysqld.pid"),
    );
    let out = apply_ok(&inv());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 of 3 hosts changed"),
        "{}",
        text(&out)
    );
    let after = (
        gtid("web-01"),
        gtid("web-02"),
        threads(),
        pidfile("web-02", "/run/mysqld/mysqld.pid"),
    );
    assert_eq!(
        before, after,
        "GTID positions, replica threads and server process unchanged"
    );
    assert_eq!(cli(&["diff", &inv()]).status.code(), Some(0));
}

fn a_restarted_replica_resumes_by_itself_and_status_says_healthy() {
    setup();
    apply_ok(&inv());
    let restarted = docker(&["restart", "-t", "30", &container("web-02")]);
    assert!(restarted.status.success(), "{}", text(&restarted));
    assert!(
        wait_until(Duration::from_secs(90), replica_running),
        "replication resumed after the restart"
    );
    // sshd starts after the services: wait until the tool reaches the host again.
    assert!(wait_until(Duration::from_secs(60), || cli(&[
        "diff",
        &inv()
    ])
    .status
    .code()
        == Some(0)));
    let r = http_post(web1(), "/items", "text=after+restart").unwrap();
    assert_eq!(r.status, 201);
    assert!(wait_until(Duration::from_secs(5), || count("web-02")
        == count("web-01")));
    assert!(
        wait_until(Duration::from_secs(30), || cli(&["status", &inv()])
            .status
            .code()
            == Some(0)),
        "status healthy again: {}",
        text(&cli(&["status", &inv()]))
    );
}

fn a_wiped_replica_is_seeded_from_the_primary_without_secrets_in_argv() {
    setup();
    apply_ok(&inv());
    for i in 0..20 {
        let r = http_post(web1(), "/items", &format!("text=row+{i}")).unwrap();
        assert_eq!(r.status, 201);
    }
    sql(
        "web-02",
        "STOP SLAVE; RESET SLAVE ALL; SET sql_log_bin=0; DROP DATABASE foobar;",
    );
    let diff = cli(&["diff", &inv()]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("seed from web-01"),
        "{}",
        text(&diff)
    );

    let (stop, sampler) = spawn_argv_sampler(Duration::from_secs(120));
    let out = cli(&["apply", "-v", &inv()]);
    stop.store(true, Ordering::SeqCst);
    let argv = sampler.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    no_secret_in(&out);
    assert!(argv.len() > 10, "ps was sampled during the apply");
    for s in lab_secrets() {
        assert!(
            !argv.iter().any(|l| l.contains(&s)),
            "a secret appeared in a process's argv on a host"
        );
    }
    assert!(replica_running());
    assert!(wait_until(Duration::from_secs(5), || count("web-02")
        == count("web-01")));
    assert!(count("web-01") >= 20);
    let r = http_post(web2(), "/items", "text=after+seed").unwrap();
    assert_eq!(r.status, 201);
    assert!(
        wait_until(Duration::from_secs(5), || count("web-02")
            == count("web-01")),
        "new rows replicate"
    );
}

/// A copy of the example app with one file changed: a new release.
fn app_variant(tag: &str) -> String {
    example_app_copy(tag);
    let variant = lab_variant(&format!("inventory-{tag}"), |t| {
        t.replace(
            "source: ../examples/app",
            &format!("source: ../examples/app-{tag}"),
        )
    });
    // lab_variant rewrites ../ to ../../ for the default source; undo it for ours.
    let text = std::fs::read_to_string(&variant)
        .unwrap()
        .replace(&format!("../../examples/app-{tag}"), &format!("app-{tag}"));
    std::fs::write(&variant, text).unwrap();
    variant.display().to_string()
}

fn served_release(addr: &str) -> String {
    http_get(addr, "/health")
        .map(|r| r.header("X-Release").unwrap_or("").to_string())
        .unwrap_or_default()
}

fn a_deploy_and_a_rollback_under_load_fail_no_request() {
    setup();
    apply_ok(&inv());
    let v1 = served_release(web1());
    assert_eq!(v1, served_release(web2()));
    let v2_inventory = app_variant("v2");
    let diff = cli(&["diff", "--json", &v2_inventory]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));
    let doc: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    let v2 = doc["hosts"][1]["release"]["to"]
        .as_str()
        .expect("a release change")
        .to_string();
    assert_ne!(v1, v2);

    for (what, args) in [
        ("deploy", vec!["apply", v2_inventory.as_str()]),
        ("rollback", vec!["rollback", v2_inventory.as_str()]),
    ] {
        let load = std::thread::spawn(|| load_loop("/", Duration::from_secs(20), 2000));
        std::thread::sleep(Duration::from_secs(2));
        let out = cli(&args);
        let (ok, failed) = load.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out));
        no_secret_in(&out);
        assert!(ok > 20, "{what}: the load loop ran ({ok} requests)");
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed: {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)]
        );
        let want = if what == "deploy" { &v2 } else { &v1 };
        assert_eq!(
            &served_release(web1()),
            want,
            "{what}: web-01 serves {want}"
        );
        assert_eq!(
            &served_release(web2()),
            want,
            "{what}: web-02 serves {want}"
        );
    }
    apply_ok(&inv());
}

fn status_reports_lag_and_backends_and_fails_on_a_stopped_sql_thread() {
    setup();
    apply_ok(&inv());
    assert!(wait_until(Duration::from_secs(20), || cli(&[
        "status",
        &inv()
    ])
    .status
    .code()
        == Some(0)));
    let out = cli(&["status", "--json", &inv()]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["healthy"], true);
    let web2 = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web-02")
        .unwrap();
    assert!(
        web2["database"]["replication"]["seconds_behind"].is_number(),
        "{web2:#}"
    );
    let lb = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "lb-01")
        .unwrap();
    let backends: Vec<&serde_json::Value> = lb["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["backend"] == "web")
        .collect();
    assert_eq!(backends.len(), 2, "{lb:#}");
    assert!(backends
        .iter()
        .all(|b| b["status"].as_str().unwrap().starts_with("UP")));

    sql("web-02", "STOP SLAVE SQL_THREAD");
    let out = cli(&["status", &inv()]);
    sql("web-02", "START SLAVE SQL_THREAD");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("web-02: PROBLEM: replication stopped: IO thread Yes, SQL thread No"),
        "{stdout}"
    );
    assert!(wait_until(Duration::from_secs(10), replica_running));
}

/// The agent reads the database over the server's socket (no client process) and must
/// read exactly what `mariadb --batch --raw --force` prints for the same statements, on
/// the primary and on the replica (SHOW SLAVE STATUS), failing statements skipped.
fn the_agents_socket_sql_reads_what_the_mariadb_client_prints() {
    setup();
    // The agent's package, loaded as the tool's bootstrap loads it (as `a`).
    let script = format!(
        "{}{}",
        foobar_infra::remote::agent::LOADER,
        r#"
__import__(a.__name__ + ".db")  # loaded as an op loads it (ops.py: on first use)
q = ["SELECT 'vars' AS tag, @@server_id, @@read_only, @@gtid_current_pos, @@datadir;",
     "SELECT 'user' AS tag, User, Host, authentication_string FROM mysql.user ORDER BY User, Host;",
     "SHOW GRANTS FOR 'nobody'@'nowhere';",
     "SELECT NULL AS n, '' AS e, 'tab\there' AS t;",
     "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='no_such_db';",
     "SHOW SLAVE STATUS;"]
for u in ("root@localhost",):
    q.append("SHOW GRANTS FOR %s;" % "@".join("'%s'" % p for p in u.split("@")))
native = a.db.native_batch(q)
code, client, err = a.proc.capture(["mariadb", "--batch", "--raw", "--force"], data="\n".join(q).encode())
print("EQUAL" if native == client else "DIFFER\n%r\n%r" % (native, client))
"#
    );
    let length = foobar_infra::remote::agent::bundle().len().to_string();
    for host in ["web-01", "web-02"] {
        let mut child = std::process::Command::new("docker")
            .args(["exec", "-i", &container(host)])
            .args(["python3", "-I", "-S", "-c", &script])
            .args([foobar_infra::remote::agent::agent_id(), &length])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("docker exec");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(foobar_infra::remote::agent::bundle())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(said.trim(), "EQUAL", "{host}: {}", text(&out));
    }
    assert!(
        replica_running(),
        "web-02 replicates (SHOW SLAVE STATUS had a row)"
    );
}
