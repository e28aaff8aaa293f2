//! What the tool knows about each service it manages, in ONE table ([`SERVICES`]): its
//! unit (init script / systemd unit) name, the pid file that shows it running, its
//! error log, whether a config change needs a reload or a restart, the validator its
//! files must pass, and the live check that proves a reload, restart or start took.
//! The run sends the table to the agent with every request ([`agent_table`],
//! src/remote/agent.rs), which keeps no service knowledge of its own; the witness
//! (src/witness.rs), `check`'s validators (src/validate.rs) and the stage request
//! (src/run/stage.rs) read it from here.
//!
//! The live checks: the exit code of `systemctl reload` or of an init script is no
//! proof (HAProxy in master-worker mode exits 0 when the new config fails to load), so
//! the services whose config the tool owns are checked "live"
//! (src/agent/foobar_agent/live.py): HAProxy's runtime API answers from a new process
//! with the proxies of the config on disk, nginx's master has new workers and its port
//! answers, MariaDB answers with the settings its .cnf asks for.

use serde_json::{json, Value};

use crate::plan::{Service, ServiceAction};
use crate::protocol::run::{LiveKind, ServiceCheck, Tcp};
use crate::render::{paths, ports};

/// Seconds a reloaded HAProxy or nginx has to show the new config: a reload that has
/// not taken by then did not take (a bind that failed, a config that did not load).
const RELOAD_PROOF_S: u64 = 15;
/// MariaDB may run crash recovery or replay its redo log before it answers.
const DATABASE_PROOF_S: u64 = 60;

/// In a validator's argv, the place of the file to check.
pub const FILE: &str = "{file}";

/// How the agent proves an action on the service took (not after a stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveCheck {
    /// A live proof of live.py (`haproxy`, `nginx`, `mariadb`): against the config at
    /// `config`, and answering on the `tcp` addresses.
    Live {
        kind: &'static str,
        config: Option<&'static str>,
        tcp: &'static [&'static str],
        timeout_s: u64,
    },
    /// A TCP connection to 127.0.0.1:PORT.
    Tcp { port: u16, timeout_s: u64 },
    /// The command exits 0.
    Command {
        argv: &'static [&'static str],
        timeout_s: u64,
    },
    /// The service runs (its pid file, else its init system).
    Running { timeout_s: u64 },
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service: Service,
    /// The init script / systemd unit name.
    pub unit: &'static str,
    /// A live process behind it means the service runs (also for the witness).
    pub pid_file: Option<&'static str>,
    /// Its error log and how many last lines of it a failed action shows.
    pub error_log: Option<(&'static str, u32)>,
    /// What a changed file asks of it: `Reload` where a reload rereads the config.
    pub on_change: ServiceAction,
    /// The validator of its main config: the agent's kind of output handling, and the
    /// argv with [`FILE`] where the file goes. None: checked by its restart and check.
    pub validator: Option<(&'static str, &'static [&'static str])>,
    pub check: LiveCheck,
}

const fn running(timeout_s: u64) -> LiveCheck {
    LiveCheck::Running { timeout_s }
}

const fn tcp(port: u16, timeout_s: u64) -> LiveCheck {
    LiveCheck::Tcp { port, timeout_s }
}

/// Every service the tool manages (one row per [`Service`]; a test checks).
pub const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        service: Service::Haproxy,
        unit: "haproxy",
        pid_file: Some("/run/haproxy.pid"),
        error_log: None,
        on_change: ServiceAction::Reload,
        // not -q: HAProxy 2.6's -q also hides the [ALERT] lines that say what is wrong
        validator: Some(("haproxy", &["haproxy", "-c", "-f", FILE])),
        check: LiveCheck::Live {
            kind: "haproxy",
            config: Some(paths::HAPROXY_CFG),
            tcp: &[],
            timeout_s: RELOAD_PROOF_S,
        },
    },
    ServiceSpec {
        service: Service::Nginx,
        unit: "nginx",
        pid_file: Some("/run/nginx.pid"),
        error_log: Some(("/var/log/nginx/error.log", 5)),
        on_change: ServiceAction::Reload,
        validator: Some(("nginx", &["nginx", "-t", "-q", "-c", FILE])),
        check: LiveCheck::Live {
            kind: "nginx",
            config: None,
            tcp: &["127.0.0.1:80"],
            timeout_s: RELOAD_PROOF_S,
        },
    },
    // A .cnf change is only read at start.
    ServiceSpec {
        service: Service::Mariadb,
        unit: "mariadb",
        pid_file: Some("/run/mysqld/mysqld.pid"),
        error_log: Some(("/var/log/mysql/error.log", 10)),
        on_change: ServiceAction::Restart,
        validator: Some((
            "mariadb",
            &["mariadbd", "--defaults-file={file}", "--help", "--verbose"],
        )),
        check: LiveCheck::Live {
            kind: "mariadb",
            config: Some(paths::MARIADB_CNF),
            tcp: &[],
            timeout_s: DATABASE_PROOF_S,
        },
    },
    // MySQL 8 is refused before any apply (no lab can run it): its server is only
    // asked whether it answers.
    ServiceSpec {
        service: Service::Mysql,
        unit: "mysql",
        pid_file: Some("/run/mysqld/mysqld.pid"),
        error_log: Some(("/var/log/mysql/error.log", 10)),
        on_change: ServiceAction::Restart,
        validator: Some((
            "mysql8",
            &["mysqld", "--defaults-file={file}", "--validate-config"],
        )),
        check: LiveCheck::Command {
            argv: &["mysqladmin", "ping", "--silent"],
            timeout_s: 60,
        },
    },
    // The app and the exporters read their settings (/etc/default) at start.
    ServiceSpec {
        service: Service::App,
        unit: "foobar-app",
        pid_file: Some("/run/foobar-app.pid"),
        error_log: None,
        on_change: ServiceAction::Restart,
        validator: None,
        check: running(20),
    },
    ServiceSpec {
        service: Service::Keepalived,
        unit: "keepalived",
        pid_file: Some("/run/keepalived.pid"),
        error_log: None,
        on_change: ServiceAction::Reload,
        validator: Some(("keepalived", &["keepalived", "-t", "-f", FILE])),
        check: running(20),
    },
    ServiceSpec {
        service: Service::Firewall,
        unit: "foobar-firewall",
        pid_file: None,
        error_log: None,
        on_change: ServiceAction::Reload,
        validator: Some(("nft", &["nft", "-c", "-f", FILE])),
        check: running(10),
    },
    ServiceSpec {
        service: Service::Prometheus,
        unit: "prometheus",
        pid_file: Some("/run/prometheus/prometheus.pid"),
        error_log: None,
        on_change: ServiceAction::Reload,
        validator: Some(("prometheus", &["promtool", "check", "config", FILE])),
        check: tcp(ports::PROMETHEUS, 30),
    },
    ServiceSpec {
        service: Service::NodeExporter,
        unit: "prometheus-node-exporter",
        pid_file: Some("/run/prometheus/prometheus-node-exporter.pid"),
        error_log: None,
        on_change: ServiceAction::Restart,
        validator: None,
        check: tcp(ports::NODE_EXPORTER, 20),
    },
    ServiceSpec {
        service: Service::NginxExporter,
        unit: "prometheus-nginx-exporter",
        pid_file: Some("/run/prometheus/prometheus-nginx-exporter.pid"),
        error_log: None,
        on_change: ServiceAction::Restart,
        validator: None,
        check: tcp(ports::NGINX_EXPORTER, 20),
    },
    ServiceSpec {
        service: Service::MysqldExporter,
        unit: "prometheus-mysqld-exporter",
        pid_file: Some("/run/prometheus/prometheus-mysqld-exporter.pid"),
        error_log: None,
        on_change: ServiceAction::Restart,
        validator: None,
        check: tcp(ports::MYSQLD_EXPORTER, 20),
    },
    ServiceSpec {
        service: Service::BlackboxExporter,
        unit: "prometheus-blackbox-exporter",
        pid_file: Some("/run/prometheus/prometheus-blackbox-exporter.pid"),
        error_log: None,
        on_change: ServiceAction::Restart,
        validator: Some((
            "blackbox",
            &[
                "prometheus-blackbox-exporter",
                "--config.check",
                "--config.file={file}",
            ],
        )),
        check: tcp(ports::BLACKBOX_EXPORTER, 20),
    },
];

/// The row of `svc`.
pub fn spec(svc: Service) -> &'static ServiceSpec {
    SERVICES
        .iter()
        .find(|s| s.service == svc)
        .expect("every service has its row in SERVICES")
}

/// `svc`'s validator argv for `file` (None: it has none).
pub fn validator_argv(svc: Service, file: &str) -> Option<Vec<String>> {
    let (_, argv) = spec(svc).validator?;
    Some(argv.iter().map(|a| a.replace(FILE, file)).collect())
}

/// `svc`'s validator as a program and the arguments before the file, for a validator
/// that takes the file last (None: it has none, or the file is elsewhere in its argv).
pub fn file_last_validator(svc: Service) -> Option<(&'static str, &'static [&'static str])> {
    let (_, argv) = spec(svc).validator?;
    match argv {
        [program, args @ .., last] if *last == FILE => Some((program, args)),
        _ => None,
    }
}

/// The check the agent runs after an action on `svc` (not after a stop).
pub fn check(svc: Service) -> ServiceCheck {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match spec(svc).check {
        LiveCheck::Live {
            kind,
            config,
            tcp,
            timeout_s,
        } => ServiceCheck {
            live: Some(LiveKind::of(kind).expect("a live check of live.py")),
            config: config.map(str::to_string),
            tcp: (!tcp.is_empty()).then(|| Tcp::Many(strings(tcp))),
            timeout_s,
            ..ServiceCheck::default()
        },
        LiveCheck::Tcp { port, timeout_s } => ServiceCheck {
            tcp: Some(Tcp::One(format!("127.0.0.1:{port}"))),
            timeout_s,
            ..ServiceCheck::default()
        },
        LiveCheck::Command { argv, timeout_s } => ServiceCheck {
            command: Some(strings(argv)),
            timeout_s,
            ..ServiceCheck::default()
        },
        LiveCheck::Running { timeout_s } => ServiceCheck {
            running: Some(true),
            timeout_s,
            ..ServiceCheck::default()
        },
    }
}

/// The table as the agent reads it (`service_table` in each request; services.py):
/// unit -> {pid_file, error_log: [PATH, LINES], validator: {kind, argv}, database,
/// server_state}: `database`, a database server (observe asks a host that no longer
/// has the role whether it still replicates); `server_state`, the load balancer whose
/// servers' state (drains, checks) is saved before a reload or restart and dropped
/// before a start.
pub fn agent_table_of(table: &[ServiceSpec]) -> Value {
    let rows: serde_json::Map<String, Value> = table
        .iter()
        .map(|s| {
            let row = json!({
                "pid_file": s.pid_file,
                "error_log": s.error_log.map(|(path, lines)| json!([path, lines])),
                "validator": s.validator.map(|(kind, argv)| json!({"kind": kind, "argv": argv})),
                "database": matches!(s.service, Service::Mariadb | Service::Mysql),
                "server_state": s.service == Service::Haproxy,
            });
            (s.unit.to_string(), row)
        })
        .collect();
    Value::Object(rows)
}

/// [`agent_table_of`] the table, built once.
pub fn agent_table() -> &'static Value {
    static TABLE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| agent_table_of(SERVICES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_learns_the_database_servers_and_the_load_balancer_from_the_table() {
        let table = agent_table();
        let flagged = |field: &str| -> Vec<&str> {
            SERVICES
                .iter()
                .map(|s| s.unit)
                .filter(|u| table[*u][field] == true)
                .collect()
        };
        assert_eq!(flagged("database"), ["mariadb", "mysql"]);
        assert_eq!(flagged("server_state"), ["haproxy"]);
    }

    #[test]
    fn the_services_whose_config_the_tool_owns_are_proven_live() {
        for (svc, kind) in [
            (Service::Haproxy, "haproxy"),
            (Service::Nginx, "nginx"),
            (Service::Mariadb, "mariadb"),
        ] {
            assert_eq!(
                serde_json::to_value(check(svc)).unwrap()["live"],
                kind,
                "{svc:?}"
            );
        }
        // The config the agent reads the expected state from is the one the tool writes.
        assert_eq!(
            check(Service::Haproxy).config.as_deref(),
            Some(paths::HAPROXY_CFG)
        );
        assert_eq!(
            check(Service::Mariadb).config.as_deref(),
            Some(paths::MARIADB_CNF)
        );
    }

    #[test]
    fn every_service_has_one_row() {
        let all: Vec<Service> = SERVICES.iter().map(|s| s.service).collect();
        for (i, s) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(s), "{s:?} twice");
        }
        for s in &all {
            assert_eq!(spec(*s).service, *s);
        }
        assert_eq!(all.len(), 12, "one row per Service");
        let table = agent_table();
        assert_eq!(table["nginx"]["pid_file"], "/run/nginx.pid");
        assert_eq!(
            table["mariadb"]["error_log"],
            json!(["/var/log/mysql/error.log", 10])
        );
        assert_eq!(
            validator_argv(Service::Haproxy, "/x.cfg").unwrap(),
            ["haproxy", "-c", "-f", "/x.cfg"]
        );
    }
}
