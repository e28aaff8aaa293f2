//! End-to-end test of monitoring on the lab (issue 6, acceptance 4): exporters on every
//! host, Prometheus on a fourth host (mon-01, role monitor) generated from the
//! inventory, every target up, and the backend-down and replication alerts firing.

use std::time::Duration;

use crate::common::*;

lab_tests!(prometheus_scrapes_every_exporter_and_alerts_fire,);

fn mon() -> String {
    addr("10.231.3.11")
}

fn monitored_inventory() -> String {
    lab_variant("monitoring", |t| {
        let t = t.replace(
            "app:\n",
            "  mon-01:\n    address: 10.231.3.11\n    roles: [monitor]\napp:\n",
        );
        format!(
            "{t}  db_monitor_password: {{ file: .state/db_monitor_password }}\n\
             monitoring:\n  scrape_interval: 2s\n  alert_for: 4s\n"
        )
    })
    .display()
    .to_string()
}

/// Prometheus's HTTP API, asked on mon-01 itself (curl there handles chunked replies).
fn prometheus(path: &str) -> serde_json::Value {
    let url = format!("http://{}:9090{path}", mon());
    let out = exec_raw("mon-01", &["curl", "-s", "--max-time", "5", &url]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Targets by "job/host" with their health.
fn targets() -> Vec<(String, String)> {
    prometheus("/api/v1/targets")["data"]["activeTargets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        format!(
                            "{}/{}",
                            t["labels"]["job"].as_str().unwrap_or("?"),
                            t["labels"]["host"].as_str().unwrap_or("?")
                        ),
                        t["health"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Firing alerts as "name/label" (label: server or host).
fn firing() -> Vec<String> {
    prometheus("/api/v1/alerts")["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["state"] == "firing")
                .map(|x| {
                    let l = &x["labels"];
                    format!(
                        "{}/{}",
                        l["alertname"].as_str().unwrap_or("?"),
                        l["server"].as_str().or(l["host"].as_str()).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn prometheus_scrapes_every_exporter_and_alerts_fire() {
    lab();
    let up = sh(&root().join("lab/up"), &["mon-01"]);
    assert!(up.status.success(), "{}", text(&up));
    let inv = monitored_inventory();
    apply_ok(&inv, &[]);
    let again = cli(&["diff", &inv]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "in sync after apply: {}",
        text(&again)
    );

    // Every exporter of every host, and Prometheus itself, up.
    let expected = [
        "prometheus/mon-01",
        "node/lb-01",
        "node/web-01",
        "node/web-02",
        "node/mon-01",
        "haproxy/lb-01",
        "nginx/web-01",
        "nginx/web-02",
        "mysqld/web-01",
        "mysqld/web-02",
    ];
    let all_up = wait_until(Duration::from_secs(60), || {
        let t = targets();
        t.len() == expected.len()
            && expected
                .iter()
                .all(|e| t.iter().any(|(n, h)| n == e && h == "up"))
    });
    assert!(all_up, "every target up: {:?}", targets());

    // The MySQL exporter's account has status privileges only.
    let grants = sql("web-01", "SHOW GRANTS FOR 'exporter'@'localhost'");
    assert!(
        grants.contains("GRANT PROCESS, BINLOG MONITOR, SLAVE MONITOR ON *.*"),
        "{grants}"
    );
    assert!(!grants.contains("SELECT"), "{grants}");
    // HAProxy's exporter answers the monitoring host only; stub_status stays local.
    let from_mon = exec(
        "mon-01",
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &addr("http://10.231.0.11:8405/metrics"),
        ],
    );
    assert!(
        from_mon.contains("haproxy_server_status"),
        "metrics from mon-01"
    );
    let here = http_get(&addr("10.231.0.11:8405"), "/metrics");
    assert!(
        here.as_ref().map(|r| r.status != 200).unwrap_or(true),
        "the exporter refuses other hosts"
    );
    assert!(http_get(&addr("10.231.1.11:8081"), "/stub_status").is_err());
    // A fresh stack may have fired an alert while it came up (a backend DOWN until
    // its first checks passed): once all is well, none fires.
    assert!(
        wait_until(Duration::from_secs(60), || firing().is_empty()),
        "no alert while all is well: {:?}",
        firing()
    );

    // A stopped web server: the backend-down alert fires.
    exec("web-02", &["service", "nginx", "stop"]);
    let fired = wait_until(Duration::from_secs(60), || {
        firing().contains(&"BackendDown/web-02".to_string())
    });
    exec("web-02", &["service", "nginx", "start"]);
    assert!(fired, "BackendDown fired for web-02: {:?}", firing());

    // Replication stopped on the replica: its alert fires.
    sql("web-02", "STOP SLAVE");
    let fired = wait_until(Duration::from_secs(60), || {
        firing().contains(&"ReplicationStopped/web-02".to_string())
    });
    sql("web-02", "START SLAVE");
    assert!(fired, "ReplicationStopped fired for web-02: {:?}", firing());
    assert!(
        wait_until(Duration::from_secs(60), || firing().is_empty()),
        "alerts resolve: {:?}",
        firing()
    );

    // Monitoring off again: exporters' settings and Prometheus's files go.
    let base = lab_inventory().display().to_string();
    apply_ok(&base, &[]);
    assert_eq!(
        remote_sha("web-01", "/etc/prometheus/mysqld-exporter.cnf"),
        ""
    );
}
