//! Unit tests of the replica's state and its verdicts (src/database/replica.rs).

use super::*;

fn primary() -> PrimaryRef {
    PrimaryRef {
        name: "web-01".into(),
        address: "10.231.1.11".into(),
        port: 3306,
        user: "repl".into(),
        secret: "db_replication_password".into(),
    }
}

/// A replica replicating as planned, read-only, both threads running.
fn healthy() -> (DbState, ReplicaState) {
    let r = ReplicaState {
        master_host: Some("10.231.1.11".into()),
        master_port: Some(3306),
        master_user: Some("repl".into()),
        using_gtid: Some("Current_Pos".into()),
        io_running: Some("Yes".into()),
        sql_running: Some("Yes".into()),
        ..ReplicaState::default()
    };
    let st = DbState {
        running: true,
        server_id: Some(12),
        read_only: Some(true),
        gtid_current_pos: Some("0-11-14".into()),
        replica: Some(r.clone()),
        ..DbState::default()
    };
    (st, r)
}

fn primary_at(gtid: &str) -> DbState {
    DbState {
        running: true,
        server_id: Some(11),
        read_only: Some(false),
        gtid_binlog_pos: Some(gtid.into()),
        ..DbState::default()
    }
}

#[test]
fn a_replica_as_planned_is_healthy() {
    let (st, r) = healthy();
    assert_eq!(
        assess(&st, &r, &primary(), Some(&primary_at("0-11-14"))),
        Verdict::Healthy
    );
    // The primary observed a moment earlier than the replica, under load.
    assert_eq!(
        assess(&st, &r, &primary(), Some(&primary_at("0-11-12"))),
        Verdict::Healthy
    );
}

#[test]
fn read_only_off_is_put_back_on() {
    let (mut st, r) = healthy();
    st.read_only = Some(false);
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Repair(vec![ReplicaRepair::ReadOnly])
    );
    // Unknown is not a change.
    st.read_only = None;
    assert_eq!(assess(&st, &r, &primary(), None), Verdict::Healthy);
}

#[test]
fn threads_stopped_by_hand_or_on_a_transient_error_are_started() {
    let (st, mut r) = healthy();
    r.sql_running = Some("No".into());
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Repair(vec![ReplicaRepair::StartSql {
            errno: 0,
            error: String::new()
        }])
    );
    r.last_sql_errno = 1205;
    r.last_sql_error = "Lock wait timeout exceeded".into();
    r.io_running = Some("No".into());
    r.last_io_errno = 2013;
    r.last_io_error = "Lost connection to server".into();
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Repair(vec![
            ReplicaRepair::StartIo {
                errno: 2013,
                error: "Lost connection to server".into()
            },
            ReplicaRepair::StartSql {
                errno: 1205,
                error: "Lock wait timeout exceeded".into()
            },
        ])
    );
}

#[test]
fn an_io_thread_connecting_is_reconnecting_not_a_change() {
    let (st, mut r) = healthy();
    r.io_running = Some("Connecting".into());
    r.last_io_errno = 2003;
    r.last_io_error = "error reconnecting to master".into();
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Reconnecting {
            errno: 2003,
            error: "error reconnecting to master".into()
        }
    );
}

#[test]
fn conflicting_errors_are_divergence_with_the_servers_number() {
    // The error MariaDB 11.8 and 10.11 give after a write on the replica, then one
    // on the primary (gtid_strict_mode).
    let (mut st, mut r) = healthy();
    st.read_only = Some(false);
    r.sql_running = Some("No".into());
    r.last_sql_errno = 1950;
    r.last_sql_error = "An attempt was made to binlog GTID 0-11-14 which would create an out-of-order sequence number with existing GTID 0-12-14, and gtid strict mode is enabled".into();
    match assess(&st, &r, &primary(), None) {
        Verdict::Diverged(d) => {
            assert_eq!(d.errno, 1950);
            assert!(
                d.error
                    .starts_with("SQL thread stopped on error 1950 (GTID out of order"),
                "{}",
                d.error
            );
            assert!(d.error.contains("out-of-order sequence number"));
        }
        other => panic!("{other:?}"),
    }
    for errno in [1062, 1032, 1146] {
        r.last_sql_errno = errno;
        assert!(
            matches!(assess(&st, &r, &primary(), None), Verdict::Diverged(d) if d.errno == errno),
            "{errno}"
        );
    }
    // The IO thread refused by the primary: the replica asks for a GTID it lacks.
    let (st, mut r) = healthy();
    r.io_running = Some("No".into());
    r.last_io_errno = 1236;
    r.last_io_error = "Got fatal error 1236 from master when reading data from binary log: 'Error: connecting slave requested to start from GTID 0-12-14, which is not in the master's binlog'".into();
    assert!(matches!(
        assess(&st, &r, &primary(), None),
        Verdict::Diverged(Divergence { errno: 1236, .. })
    ));
}

#[test]
fn a_transaction_of_its_own_is_divergence_before_replication_stops_on_it() {
    let (mut st, r) = healthy();
    st.read_only = Some(false);
    st.gtid_current_pos = Some("0-12-15".into());
    match assess(&st, &r, &primary(), Some(&primary_at("0-11-14"))) {
        Verdict::Diverged(d) => {
            assert_eq!(d.errno, 0);
            assert!(d.error.contains("GTID 0-12-15"), "{}", d.error);
        }
        other => panic!("{other:?}"),
    }
    // The same sequence number written by the primary: still its own.
    assert!(matches!(
        assess(&st, &r, &primary(), Some(&primary_at("0-11-15"))),
        Verdict::Diverged(_)
    ));
    // Without the primary's position, only the read_only repair shows.
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Repair(vec![ReplicaRepair::ReadOnly])
    );
    // A former primary (after a failover round trip): its own GTIDs are in the new
    // primary's binary log, as the same or an older position.
    st.read_only = Some(true);
    for at in ["0-12-15", "0-11-16"] {
        assert_eq!(
            assess(&st, &r, &primary(), Some(&primary_at(at))),
            Verdict::Healthy,
            "{at}"
        );
    }
}

#[test]
fn another_port_user_or_gtid_mode_is_re_pointed() {
    let (st, mut r) = healthy();
    r.using_gtid = Some("Slave_Pos".into());
    r.sql_running = Some("No".into());
    assert_eq!(
        assess(&st, &r, &primary(), None),
        Verdict::Repair(vec![ReplicaRepair::Source {
            seen: "port 3306, user repl, GTID Slave_Pos".into()
        }]),
        "re-pointing starts the threads too"
    );
}

#[test]
fn long_server_messages_are_cut() {
    let (st, mut r) = healthy();
    r.sql_running = Some("No".into());
    r.last_sql_errno = 1062;
    r.last_sql_error = "x".repeat(5000);
    match assess(&st, &r, &primary(), None) {
        Verdict::Diverged(d) => assert!(d.error.len() < 500, "{}", d.error.len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gtid_lists_parse() {
    assert_eq!(gtids("0-1-14,1-2-3"), [(0, 1, 14), (1, 2, 3)]);
    assert_eq!(gtids(""), []);
}
