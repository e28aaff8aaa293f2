//! End-to-end test of secret rotation on the lab (issue 9, acceptance 5): the
//! application's and the replication's database passwords changed at their source, then
//! `apply` under a bounded request loop at the load balancer: no failed request, the old
//! password refused, the new one accepted, replication still running, and no password in
//! any output or in the hosts' process lists.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;

lab_tests!(rotating_the_database_passwords_fails_no_request,);

/// Logs in as the application user from web-01 to web-01's database (password in the
/// environment, not argv).
fn app_login_works(password: &str) -> bool {
    docker(&[
        "exec",
        "-e",
        &format!("MYSQL_PWD={password}"),
        &container("web-01"),
        "mariadb",
        "-h",
        web1(),
        "-u",
        "foobar",
        "-N",
        "-e",
        "SELECT 1",
    ])
    .status
    .success()
}

fn replication_running() -> bool {
    let out = exec("web-02", &["mariadb", "-e", "SHOW SLAVE STATUS\\G"]);
    out.contains("Slave_IO_Running: Yes") && out.contains("Slave_SQL_Running: Yes")
}

fn rotating_the_database_passwords_fails_no_request() {
    lab();
    let base = lab_inventory().display().to_string();
    apply_ok(&base, &[]);
    let old = lab_secrets();
    let state = state_dir();
    let new_app = "Rotated-app-7f3c9d21b8e4";
    let new_repl = "Rotated-repl-4a8e2c61f09d";
    std::fs::write(state.join("rotated_app_password"), new_app).unwrap();
    std::fs::write(state.join("rotated_repl_password"), new_repl).unwrap();
    let rotated = lab_variant("rotated", |t| {
        t.replace(
            "file: .state/db_app_password",
            "file: .state/rotated_app_password",
        )
        .replace(
            "file: .state/db_replication_password",
            "file: .state/rotated_repl_password",
        )
    })
    .display()
    .to_string();
    assert!(app_login_works(&old[0]), "the old password works before");

    let diff = cli(&["diff", &rotated]);
    assert_eq!(diff.status.code(), Some(2), "{}", text(&diff));

    let (stop, sampler) = spawn_argv_sampler(Duration::from_secs(90));
    let load = std::thread::spawn(|| load_loop("/health", Duration::from_secs(20), 3000));
    let out = cli(&["apply", &rotated]);
    let (ok, failed) = load.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let argv = sampler.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    eprintln!(
        "rotation under load: {ok} requests answered, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "no failed request: {failed:?}");
    assert!(ok >= 20, "the load loop ran: {ok}");

    // The old password is refused, the new one works, replication runs (and carries a
    // new row), and a second run is in sync (the replica uses the new password).
    assert!(
        !app_login_works(&old[0]),
        "the old password no longer works"
    );
    assert!(app_login_works(new_app), "the new password works");
    assert!(replication_running(), "replication runs after the rotation");
    exec(
        "web-02",
        &[
            "mariadb",
            "-e",
            "STOP SLAVE IO_THREAD; START SLAVE IO_THREAD",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), replication_running),
        "the replica logs in again with the new password"
    );
    let again = cli(&["diff", &rotated]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    // No password anywhere: the tool's output, the diff, the hosts' process lists.
    let secrets = [old[0].as_str(), old[1].as_str(), new_app, new_repl];
    for s in secrets {
        for (what, o) in [("apply", &out), ("diff", &diff)] {
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains(s),
                "{what} stdout"
            );
            assert!(
                !String::from_utf8_lossy(&o.stderr).contains(s),
                "{what} stderr"
            );
        }
        assert!(
            !argv.iter().any(|l| l.contains(s)),
            "a password in a process list"
        );
    }
    assert!(
        argv.len() > 100,
        "the process lists were sampled: {}",
        argv.len()
    );

    // And back to the lab's own secrets.
    apply_ok(&base, &[]);
    assert!(app_login_works(&old[0]));
}
