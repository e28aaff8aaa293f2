//! Monitoring: what every host exposes to the monitoring hosts (exporters and their
//! settings), and Prometheus on the monitoring hosts (scrape jobs, rules, blackbox).

use anyhow::Result;
use serde::Serialize;

use super::{builtin, paths, ports, HostFiles};
use crate::inventory::{Host, Inventory, MonitoringSettings, Role};
use crate::plan::{ManagedFile, Service};

#[derive(Serialize)]
struct MonTarget {
    address: String,
    host: String,
    role: &'static str,
}

#[derive(Serialize)]
struct MonJob {
    name: &'static str,
    port: u16,
    targets: Vec<MonTarget>,
}

#[derive(Serialize)]
struct BlackboxCtx {
    port: u16,
    targets: Vec<MonTarget>,
}

/// Prometheus on a monitoring host: what it scrapes and when it alerts.
#[derive(Serialize)]
pub(super) struct MonCtx<'a> {
    scrape_interval: &'a str,
    alert_for: &'a str,
    max_lag: u64,
    cert_days: u64,
    rules_path: &'static str,
    prometheus_port: u16,
    jobs: Vec<MonJob>,
    blackbox: Option<BlackboxCtx>,
}

/// What every host exposes to the monitoring hosts.
#[derive(Serialize)]
pub(super) struct MetricsCtx {
    /// HAProxy's exporter port (load balancers).
    haproxy_port: u16,
    /// nginx stub_status on localhost (web servers).
    nginx_status_port: u16,
    /// Who may scrape.
    monitors: Vec<String>,
}

pub(super) fn metrics_ctx(inv: &Inventory) -> Option<MetricsCtx> {
    let m = inv.monitoring.as_ref()?;
    Some(MetricsCtx {
        haproxy_port: m.haproxy_port,
        nginx_status_port: ports::NGINX_STATUS,
        monitors: inv
            .with_role(Role::Monitor)
            .map(|h| h.address.to_string())
            .collect(),
    })
}

pub(super) fn mon_ctx<'a>(inv: &'a Inventory, host: &Host) -> Option<MonCtx<'a>> {
    let m = inv.monitoring.as_ref()?;
    if !host.has(Role::Monitor) {
        return None;
    }
    let role_of = |h: &Host| -> &'static str {
        [
            Role::DbPrimary,
            Role::DbReplica,
            Role::Lb,
            Role::Web,
            Role::Monitor,
        ]
        .into_iter()
        .find(|r| h.has(*r))
        .map(|r| match r {
            Role::DbPrimary => "primary",
            Role::DbReplica => "replica",
            r => r.as_str(),
        })
        .unwrap_or("host")
    };
    let targets = |pred: &dyn Fn(&Host) -> bool| -> Vec<MonTarget> {
        inv.hosts
            .iter()
            .filter(|h| pred(h))
            .map(|h| MonTarget {
                address: h.address.to_string(),
                host: h.name.clone(),
                role: role_of(h),
            })
            .collect()
    };
    let mut jobs = vec![MonJob {
        name: "node",
        port: ports::NODE_EXPORTER,
        targets: targets(&|_| true),
    }];
    for (name, port, pred) in [
        (
            "haproxy",
            m.haproxy_port,
            &(|h: &Host| h.has(Role::Lb)) as &dyn Fn(&Host) -> bool,
        ),
        ("nginx", ports::NGINX_EXPORTER, &|h: &Host| h.has(Role::Web)),
        ("mysqld", ports::MYSQLD_EXPORTER, &|h: &Host| h.is_db()),
    ] {
        let t = targets(pred);
        if !t.is_empty() {
            jobs.push(MonJob {
                name,
                port,
                targets: t,
            });
        }
    }
    Some(MonCtx {
        scrape_interval: &m.scrape_interval,
        alert_for: &m.alert_for,
        max_lag: m.max_replication_lag,
        cert_days: m.cert_expiry_days,
        rules_path: paths::PROMETHEUS_RULES,
        prometheus_port: ports::PROMETHEUS,
        jobs,
        blackbox: inv.tls.as_ref().map(|_| BlackboxCtx {
            port: ports::BLACKBOX_EXPORTER,
            targets: targets(&|h| h.has(Role::Lb)),
        }),
    })
}

/// The exporters every host runs for the monitoring hosts, and Prometheus itself.
pub(super) fn monitoring_files(
    inv: &Inventory,
    m: &MonitoringSettings,
    host: &Host,
    out: &mut HostFiles,
) -> Result<()> {
    // No systemd collector: there may be no systemd (and no D-Bus) to ask.
    out.files.push(exporter_defaults(
        Service::NodeExporter,
        "--no-collector.systemd",
    ));
    out.services.push(Service::NodeExporter);
    if host.has(Role::Web) {
        out.files.push(exporter_defaults(
            Service::NginxExporter,
            &format!(
                "-nginx.scrape-uri=http://127.0.0.1:{}/stub_status",
                ports::NGINX_STATUS
            ),
        ));
        out.services.push(Service::NginxExporter);
    }
    if host.is_db() {
        out.files.push(exporter_defaults(
            Service::MysqldExporter,
            &format!("--config.my-cnf={}", paths::MYSQLD_EXPORTER_CNF),
        ));
        let mut cnf = builtin(
            paths::MYSQLD_EXPORTER_CNF.into(),
            format!(
                "# Managed by foobar-infra: the MySQL exporter's least-privilege account.\n\
                 [client]\nuser={}\npassword={}\nsocket=/run/mysqld/mysqld.sock\n",
                m.mysql_user,
                crate::secrets::placeholder(crate::inventory::MONITOR_SECRET)
            ),
            0o640,
            Service::MysqldExporter,
        );
        cnf.group = "prometheus".into();
        out.files.push(cnf);
        out.services.push(Service::MysqldExporter);
    }
    if host.has(Role::Monitor) {
        prometheus_files(inv, out)?;
    }
    Ok(())
}

/// Prometheus's configuration and rules, and the blackbox exporter with TLS.
fn prometheus_files(inv: &Inventory, out: &mut HostFiles) -> Result<()> {
    out.push(
        "prometheus.yml",
        paths::PROMETHEUS_YML.into(),
        Service::Prometheus,
    )?;
    out.push(
        "prometheus-rules.yml",
        paths::PROMETHEUS_RULES.into(),
        Service::Prometheus,
    )?;
    out.services.push(Service::Prometheus);
    if inv.tls.is_some() {
        out.push(
            "blackbox.yml",
            paths::BLACKBOX_YML.into(),
            Service::BlackboxExporter,
        )?;
        // Debian's init script checks this file with promtool, which rejects every
        // blackbox config: check it with the exporter itself instead.
        let mut d = exporter_defaults(
            Service::BlackboxExporter,
            &format!("--config.file {}", paths::BLACKBOX_YML),
        );
        d.content.push_str(&format!(
            "config_check() {{ /usr/bin/prometheus-blackbox-exporter --config.file={} --config.check >/dev/null 2>&1 || {{ echo \"blackbox config invalid\" >&2; exit 2; }}; }}\n",
            paths::BLACKBOX_YML
        ));
        out.files.push(d);
        out.services.push(Service::BlackboxExporter);
    }
    Ok(())
}

/// A service's Debian settings file (`/etc/default/SERVICE`) giving its arguments.
fn exporter_defaults(svc: Service, args: &str) -> ManagedFile {
    builtin(
        paths::default_file(svc.unit()),
        format!("# Managed by foobar-infra: options of {svc}.\nARGS=\"{args}\"\n"),
        0o644,
        svc,
    )
}
