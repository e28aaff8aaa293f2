//! How the agent proves a service took its new files after a reload, restart or start:
//! one check per service, sent with each action. The exit code of `systemctl reload` or
//! of an init script is no proof (HAProxy in master-worker mode exits 0 when the new
//! config fails to load), so the services whose config the tool owns are checked
//! "live" (src/agent/foobar_agent/live.py): HAProxy's runtime API answers from a new process with
//! the proxies of the config on disk, nginx's master has new workers and its port
//! answers, MariaDB answers with the settings its .cnf asks for.

use serde_json::{json, Value};

use crate::plan::Service;
use crate::render::{paths, ports};

/// Seconds a reloaded HAProxy or nginx has to show the new config: a reload that has
/// not taken by then did not take (a bind that failed, a config that did not load).
const RELOAD_PROOF_S: u64 = 15;
/// MariaDB may run crash recovery or replay its redo log before it answers.
const DATABASE_PROOF_S: u64 = 60;

/// The check the agent runs after an action on `svc` (not after a stop).
pub fn check(svc: Service) -> Value {
    match svc {
        Service::Haproxy => {
            json!({"live": "haproxy", "config": paths::HAPROXY_CFG, "timeout_s": RELOAD_PROOF_S})
        }
        Service::Nginx => {
            json!({"live": "nginx", "tcp": ["127.0.0.1:80"], "timeout_s": RELOAD_PROOF_S})
        }
        Service::Mariadb => {
            json!({"live": "mariadb", "config": paths::MARIADB_CNF, "timeout_s": DATABASE_PROOF_S})
        }
        // MySQL 8 is refused before any apply (no lab can run it): its server is only
        // asked whether it answers.
        Service::Mysql => json!({"command": ["mysqladmin", "ping", "--silent"], "timeout_s": 60}),
        Service::App | Service::Keepalived => json!({"running": true, "timeout_s": 20}),
        Service::Firewall => json!({"running": true, "timeout_s": 10}),
        Service::Prometheus => tcp(ports::PROMETHEUS, 30),
        Service::NodeExporter => tcp(ports::NODE_EXPORTER, 20),
        Service::NginxExporter => tcp(ports::NGINX_EXPORTER, 20),
        Service::MysqldExporter => tcp(ports::MYSQLD_EXPORTER, 20),
        Service::BlackboxExporter => tcp(ports::BLACKBOX_EXPORTER, 20),
    }
}

fn tcp(port: u16, timeout_s: u64) -> Value {
    json!({"tcp": format!("127.0.0.1:{port}"), "timeout_s": timeout_s})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_whose_config_the_tool_owns_are_proven_live() {
        for (svc, kind) in [
            (Service::Haproxy, "haproxy"),
            (Service::Nginx, "nginx"),
            (Service::Mariadb, "mariadb"),
        ] {
            assert_eq!(check(svc)["live"], kind, "{svc:?}");
        }
        // The config the agent reads the expected state from is the one the tool writes.
        assert_eq!(check(Service::Haproxy)["config"], paths::HAPROXY_CFG);
        assert_eq!(check(Service::Mariadb)["config"], paths::MARIADB_CNF);
    }
}
