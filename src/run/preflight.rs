//! What must hold on the hosts before apply changes anything: every TCP port the stack
//! listens on (HAProxy's 80 and 443, nginx's 80, the application's port, the
//! database's) is free or held by the service meant to hold it. A port held by another
//! process makes the service's reload fail while the reload command exits 0
//! (FIELD-NOTES.md, Debian 13), so `diff`, `plan` and `apply` refuse before staging.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::plan::{HostPlan, Listen, Plan, Service};
use crate::protocol::run::PortWanted;
use crate::remote::agent::{HostState, Listener};

/// The services whose ports are checked, with the processes that may hold them:
/// prefixes of the process name (`/proc/PID/comm`, at most 15 characters) or of its
/// executable's file name. The application is gunicorn started by python3 (its name is
/// "python3", or "gunicorn: maste…" where setproctitle is installed).
const HOLDERS: &[(Service, &[&str])] = &[
    (Service::Haproxy, &["haproxy"]),
    (Service::Nginx, &["nginx"]),
    (Service::Mariadb, &["mariadbd", "mysqld"]),
    (Service::Mysql, &["mysqld", "mariadbd"]),
    (Service::App, &["gunicorn", "python3"]),
];

/// The process names that may hold the ports of a service (none: not checked).
pub fn process_names(service: Service) -> &'static [&'static str] {
    HOLDERS
        .iter()
        .find(|(s, _)| *s == service)
        .map_or(&[], |(_, names)| names)
}

/// [`process_names`] by unit name (the witness knows services by unit).
pub fn process_names_of_unit(unit: &str) -> &'static [&'static str] {
    HOLDERS
        .iter()
        .find(|(s, _)| s.unit() == unit)
        .map_or(&[], |(_, names)| names)
}

/// The `ports` of an observe request: each port the host needs, its service and the
/// process names whose descriptors the agent reads first (so that a host whose ports
/// are held by their own services costs a few directory listings).
pub fn observe_ports(hp: &HostPlan) -> Vec<PortWanted> {
    hp.listens
        .iter()
        .map(|l| PortWanted {
            port: l.port,
            service: l.service.unit().to_string(),
            names: process_names(l.service)
                .iter()
                .map(|n| n.to_string())
                .collect(),
        })
        .collect()
}

/// A port the stack needs, held by a process that is not its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConflict {
    pub host: String,
    /// What needs the port.
    pub want: Listen,
    /// Who holds it.
    pub holder: Listener,
    /// The host's init system (`systemd` or `sysv`): how to stop the holder.
    pub init: String,
}

impl PortConflict {
    /// `port 80 is held by nginx (pid 1234), not haproxy: stop and disable it (...)
    /// before applying`.
    pub fn describe(&self) -> String {
        let h = &self.holder;
        let who = match (h.process.as_deref().or(h.exe.as_deref()), h.pid) {
            (Some(name), Some(pid)) => format!("{name} (pid {pid})"),
            (None, Some(pid)) => format!("pid {pid}"),
            _ => format!(
                "a process this host does not show (a socket on {})",
                h.address
            ),
        };
        let service = match self.want.service {
            Service::App => "the application server (foobar-app)".to_string(),
            s => s.unit().to_string(),
        };
        let fix = match (&h.unit, h.pid) {
            (Some(unit), _) if self.init == "systemd" => {
                format!("stop and disable it (systemctl disable --now {unit})")
            }
            (Some(unit), _) => {
                format!("stop and disable it (service {unit} stop; update-rc.d {unit} disable)")
            }
            (None, Some(pid)) => {
                format!("stop it (kill {pid}) and keep it from starting at boot")
            }
            (None, None) => format!("find it (ss -ltnp 'sport = :{}') and stop it", h.port),
        };
        format!(
            "port {} is held by {who}, not {service}: {fix} before applying",
            h.port
        )
    }

    /// [`describe`](Self::describe), naming the host.
    pub fn message(&self) -> String {
        format!("{}: {}", self.host, self.describe())
    }

    /// The error as `--json` carries it.
    pub fn to_json(&self) -> Value {
        let h = &self.holder;
        json!({
            "kind": "port-held", "host": self.host, "port": h.port, "address": h.address,
            "service": self.want.service.unit(), "pid": h.pid, "process": h.process,
            "exe": h.exe, "unit": h.unit, "message": self.message(),
        })
    }
}

/// Whether the listener's process is one of the service's.
fn held_by(service: Service, l: &Listener) -> bool {
    let names = process_names(service);
    [&l.process, &l.exe]
        .into_iter()
        .flatten()
        .any(|n| names.iter().any(|p| n.starts_with(p)))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn plain(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a listener on `seen` stops a bind of `want` on the same port (Linux: a
/// wildcard overlaps every address of its family). `dual` says whether an IPv6
/// wildcard listener may also cover IPv4 (it does unless it is IPv6-only, which
/// /proc/net/tcp6 does not tell).
fn overlaps(want: IpAddr, seen: IpAddr, dual: bool) -> bool {
    match (plain(want), plain(seen)) {
        (IpAddr::V4(w), IpAddr::V4(s)) => w.is_unspecified() || s.is_unspecified() || w == s,
        (IpAddr::V6(w), IpAddr::V6(s)) => w.is_unspecified() || s.is_unspecified() || w == s,
        (IpAddr::V4(_), IpAddr::V6(s)) => s.is_unspecified() && dual,
        (IpAddr::V6(w), IpAddr::V4(_)) => w.is_unspecified(),
    }
}

/// The ports of one host held by a process other than the service that needs them,
/// one per port and holder.
pub fn port_conflicts(hp: &HostPlan, st: &HostState) -> Vec<PortConflict> {
    let mut out: Vec<PortConflict> = Vec::new();
    for want in &hp.listens {
        let on_port: Vec<&Listener> = st
            .listeners
            .iter()
            .filter(|l| l.port == want.port)
            .collect();
        // A port two services of the plan need is the plan's problem, not a holder's.
        let ours = |l: &Listener| {
            hp.listens
                .iter()
                .any(|w| w.port == l.port && held_by(w.service, l))
        };
        // While the service holds an IPv4 listener on its address, an IPv6 wildcard
        // beside it must be IPv6-only (or one of the two binds would have failed).
        let dual = !on_port.iter().any(|l| {
            ours(l) && plain(l.address).is_ipv4() && overlaps(want.address, l.address, false)
        });
        for l in on_port {
            if ours(l) || !overlaps(want.address, l.address, dual) {
                continue;
            }
            let seen = out
                .iter()
                .any(|c| c.holder.port == l.port && c.holder.pid == l.pid);
            if !seen {
                out.push(PortConflict {
                    host: hp.name().to_string(),
                    want: *want,
                    holder: l.clone(),
                    init: st.init.clone(),
                });
            }
        }
    }
    out
}

/// [`port_conflicts`] of every observed host of the plan.
pub fn conflicts(plan: &Plan, observed: &BTreeMap<String, HostState>) -> Vec<PortConflict> {
    plan.hosts
        .iter()
        .filter_map(|hp| Some(port_conflicts(hp, observed.get(hp.name())?)))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(init: &str, listeners: Value) -> HostState {
        serde_json::from_value(json!({
            "init": init, "hostname": "h", "files": {}, "listeners": listeners,
        }))
        .unwrap()
    }

    fn host(name: &str) -> HostPlan {
        crate::render::lab_plan().host(name).unwrap().clone()
    }

    fn messages(hp: &HostPlan, st: &HostState) -> Vec<String> {
        port_conflicts(hp, st).iter().map(|c| c.message()).collect()
    }

    #[test]
    fn the_lab_hosts_need_their_ports() {
        let ports = |name: &str| -> Vec<(u16, String, Service)> {
            host(name)
                .listens
                .iter()
                .map(|l| (l.port, l.address.to_string(), l.service))
                .collect()
        };
        assert_eq!(ports("lb-01"), [(80, "0.0.0.0".into(), Service::Haproxy)]);
        assert_eq!(
            ports("web-01"),
            [
                (80, "0.0.0.0".into(), Service::Nginx),
                (8000, "127.0.0.1".into(), Service::App),
                (3306, "10.231.1.11".into(), Service::Mariadb),
            ]
        );
        let request = observe_ports(&host("web-02"));
        assert_eq!(
            serde_json::to_value(&request[1]).unwrap(),
            json!({"port": 8000, "service": "foobar-app", "names": ["gunicorn", "python3"]})
        );
    }

    #[test]
    fn the_distributions_nginx_on_a_load_balancer_is_named_with_the_fix() {
        let lb = host("lb-01");
        // Debian's default site: 0.0.0.0:80 and [::]:80, master and workers.
        let nginx = json!([
            {"port": 80, "address": "0.0.0.0", "pid": 1234, "process": "nginx", "exe": "nginx", "unit": "nginx"},
            {"port": 80, "address": "::", "pid": 1234, "process": "nginx", "exe": "nginx", "unit": "nginx"},
        ]);
        assert_eq!(
            messages(&lb, &observed("systemd", nginx.clone())),
            [
                "lb-01: port 80 is held by nginx (pid 1234), not haproxy: stop and disable it \
              (systemctl disable --now nginx) before applying"
            ]
        );
        assert_eq!(
            messages(&lb, &observed("sysv", nginx)),
            [
                "lb-01: port 80 is held by nginx (pid 1234), not haproxy: stop and disable it \
              (service nginx stop; update-rc.d nginx disable) before applying"
            ]
        );
        // Started by hand (no unit), or not to be found at all.
        let by_hand = json!([{"port": 80, "address": "0.0.0.0", "pid": 77, "process": "python3", "exe": "python3.11"}]);
        assert_eq!(
            messages(&lb, &observed("sysv", by_hand)),
            ["lb-01: port 80 is held by python3 (pid 77), not haproxy: stop it (kill 77) and keep \
              it from starting at boot before applying"]
        );
        let unknown = json!([{"port": 80, "address": "0.0.0.0"}]);
        let c = port_conflicts(&lb, &observed("sysv", unknown));
        assert!(
            c[0].message().contains("a process this host does not show"),
            "{c:?}"
        );
        assert_eq!(c[0].to_json()["kind"], "port-held");
        assert_eq!(c[0].to_json()["service"], "haproxy");
    }

    #[test]
    fn a_host_whose_services_hold_their_ports_has_no_conflict() {
        let lb = host("lb-01");
        let haproxy = json!([
            {"port": 80, "address": "0.0.0.0", "pid": 10, "process": "haproxy", "exe": "haproxy"},
        ]);
        assert!(port_conflicts(&lb, &observed("systemd", haproxy)).is_empty());
        assert!(port_conflicts(&lb, &observed("systemd", json!([]))).is_empty());
        let web = host("web-01");
        let own = json!([
            {"port": 80, "address": "0.0.0.0", "pid": 20, "process": "nginx", "exe": "nginx"},
            {"port": 8000, "address": "127.0.0.1", "pid": 30, "process": "python3", "exe": "python3.11"},
            {"port": 8000, "address": "127.0.0.1", "pid": 31, "process": "gunicorn: maste", "exe": "python3.11"},
            {"port": 3306, "address": "10.231.1.11", "pid": 40, "process": "mariadbd", "exe": "mariadbd"},
            // Beside nginx's IPv4 listener an IPv6 wildcard must be IPv6-only: no clash.
            {"port": 80, "address": "::", "pid": 50, "process": "apache2", "exe": "apache2"},
            // Another address than the database's own: no clash either.
            {"port": 3306, "address": "127.0.0.1", "pid": 60, "process": "socat", "exe": "socat"},
        ]);
        assert!(port_conflicts(&web, &observed("sysv", own)).is_empty());
    }

    #[test]
    fn each_port_of_a_web_server_held_by_another_process_is_a_conflict() {
        let web = host("web-01");
        let others = json!([
            {"port": 80, "address": "::", "pid": 50, "process": "apache2", "exe": "apache2", "unit": "apache2"},
            {"port": 8000, "address": "0.0.0.0", "pid": 60, "process": "node", "exe": "node"},
            {"port": 3306, "address": "::ffff:10.231.1.11", "pid": 70, "process": "docker-proxy", "exe": "docker-proxy"},
        ]);
        let c = port_conflicts(&web, &observed("systemd", others));
        let got: Vec<(u16, Service, Option<u32>)> = c
            .iter()
            .map(|c| (c.holder.port, c.want.service, c.holder.pid))
            .collect();
        assert_eq!(
            got,
            [
                (80, Service::Nginx, Some(50)),
                (8000, Service::App, Some(60)),
                (3306, Service::Mariadb, Some(70)),
            ]
        );
        assert!(c[1]
            .message()
            .starts_with("web-01: port 8000 is held by node (pid 60), not the application server (foobar-app): stop it (kill 60)"));
    }

    #[test]
    fn every_host_of_the_plan_is_looked_at() {
        let plan = crate::render::lab_plan();
        let held = json!([{"port": 80, "address": "0.0.0.0", "pid": 9, "process": "nginx", "unit": "nginx"}]);
        let observed = BTreeMap::from([
            ("lb-01".to_string(), observed("sysv", held.clone())),
            ("web-01".to_string(), observed("sysv", held)),
        ]);
        let c = conflicts(&plan, &observed);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].host, "lb-01");
        assert_eq!(process_names_of_unit("foobar-app"), ["gunicorn", "python3"]);
        assert!(process_names_of_unit("keepalived").is_empty());
    }
}
