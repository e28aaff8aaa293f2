//! The host firewall (nftables): each host's source sets and accept rules by role, the
//! ruleset file and the boot service that loads it.

use anyhow::Result;
use serde::Serialize;

use super::{builtin, paths, ports, HostFiles};
use crate::inventory::{FirewallSettings, Host, Inventory, MonitoringSettings, Role};
use crate::plan::{Init, Service};

/// A named set of source networks in the firewall.
#[derive(Serialize)]
struct FwSet {
    name: String,
    /// ipv4_addr or ipv6_addr
    kind: &'static str,
    elements: Vec<String>,
}

#[derive(Serialize)]
struct FwSetRef {
    /// ip or ip6
    family: &'static str,
    name: String,
}

#[derive(Serialize)]
struct FwRule {
    comment: String,
    /// nft match, e.g. `tcp dport { 80, 443 }`.
    matcher: String,
    /// From anywhere.
    any: bool,
    sets: Vec<FwSetRef>,
}

#[derive(Serialize)]
pub(super) struct FwCtx {
    sets: Vec<FwSet>,
    rules: Vec<FwRule>,
}

/// The firewall of one host: who may reach which of its ports, by role.
pub(super) fn fw_ctx(inv: &Inventory, host: &Host) -> Option<FwCtx> {
    let fw = inv.firewall.as_ref()?;
    let sets = source_sets(inv, host, fw);
    let mut rules = Rules {
        sets: &sets,
        rules: Vec::new(),
    };
    rules.by_role(inv, host);
    if let Some(m) = &inv.monitoring {
        rules.monitoring(m, host);
    }
    let rules = rules.rules;
    Some(FwCtx { sets, rules })
}

/// The source groups (admin networks, the other load balancers, the database clients,
/// the monitoring hosts), each split into an IPv4 and an IPv6 set (nft sets have one
/// type); an empty set is left out.
fn source_sets(inv: &Inventory, host: &Host, fw: &FirewallSettings) -> Vec<FwSet> {
    let addrs = |pred: &dyn Fn(&Host) -> bool| -> Vec<String> {
        inv.hosts
            .iter()
            .filter(|h| pred(h))
            .map(|h| h.address.to_string())
            .collect()
    };
    let mut groups: Vec<(&str, Vec<String>)> = vec![("admin", fw.admin.clone())];
    groups.push((
        "balancers",
        addrs(&|h| h.has(Role::Lb) && h.name != host.name),
    ));
    groups.push((
        "db_clients",
        addrs(&|h| (h.has(Role::Web) || h.is_db()) && h.name != host.name),
    ));
    groups.push(("monitors", addrs(&|h| h.has(Role::Monitor))));
    let mut sets = Vec::new();
    for (name, elements) in &groups {
        for (suffix, kind, v4) in [("v4", "ipv4_addr", true), ("v6", "ipv6_addr", false)] {
            let mut el: Vec<String> = elements
                .iter()
                .filter(|e| crate::inventory::parse_cidr(e).is_some_and(|(a, _)| a.is_ipv4() == v4))
                .cloned()
                .collect();
            el.sort();
            el.dedup();
            if !el.is_empty() {
                sets.push(FwSet {
                    name: format!("{name}_{suffix}"),
                    kind,
                    elements: el,
                });
            }
        }
    }
    sets
}

/// A host's accept rules as they are added, over its source sets.
struct Rules<'a> {
    sets: &'a [FwSet],
    rules: Vec<FwRule>,
}

impl Rules<'_> {
    /// The sets of a source group (its IPv4 and IPv6 halves that have members).
    fn refs(&self, group: &str) -> Vec<FwSetRef> {
        self.sets
            .iter()
            .filter(|s| s.name.rsplit_once('_').is_some_and(|(g, _)| g == group))
            .map(|s| FwSetRef {
                family: if s.kind == "ipv4_addr" { "ip" } else { "ip6" },
                name: s.name.clone(),
            })
            .collect()
    }

    /// Accepts `matcher` from the group `from`, or from anywhere.
    fn rule(&mut self, comment: String, matcher: String, from: Option<&str>) {
        let sets = from.map(|g| self.refs(g)).unwrap_or_default();
        // A rule for a group with no members would accept nothing: leave it out.
        if from.is_none() || !sets.is_empty() {
            self.rules.push(FwRule {
                comment,
                matcher,
                any: from.is_none(),
                sets,
            });
        }
    }

    /// SSH, and the ports of the host's roles.
    fn by_role(&mut self, inv: &Inventory, host: &Host) {
        self.rule(
            "SSH from the admin networks".into(),
            format!("tcp dport {}", host.ssh.port),
            Some("admin"),
        );
        if host.has(Role::Lb) {
            let ports = if inv.tls.is_some() {
                "{ 80, 443 }"
            } else {
                "80"
            };
            self.rule(
                "the site, from anywhere".into(),
                format!("tcp dport {ports}"),
                None,
            );
            if inv.vip.is_some() {
                self.rule(
                    "VRRP between the load balancers (keepalived)".into(),
                    "meta l4proto 112".into(), // vrrp, by number (no /etc/protocols needed)
                    Some("balancers"),
                );
            }
        }
        if host.has(Role::Web) {
            self.rule(
                "HTTP from the load balancers".into(),
                "tcp dport 80".into(),
                Some("balancers"),
            );
        }
        if host.is_db() {
            self.rule(
                "MySQL from the application servers and the other database hosts".into(),
                format!("tcp dport {}", inv.mysql.port),
                Some("db_clients"),
            );
        }
    }

    /// The exporters' ports for the monitoring hosts, and Prometheus on a monitor.
    fn monitoring(&mut self, m: &MonitoringSettings, host: &Host) {
        let mut exporters = vec![ports::NODE_EXPORTER];
        if host.has(Role::Lb) {
            exporters.push(m.haproxy_port);
        }
        if host.has(Role::Web) {
            exporters.push(ports::NGINX_EXPORTER);
        }
        if host.is_db() {
            exporters.push(ports::MYSQLD_EXPORTER);
        }
        let list: Vec<String> = exporters.iter().map(u16::to_string).collect();
        self.rule(
            "metrics, from the monitoring hosts".into(),
            format!("tcp dport {{ {} }}", list.join(", ")),
            Some("monitors"),
        );
        if host.has(Role::Monitor) {
            self.rule(
                "Prometheus, from the admin networks".into(),
                format!("tcp dport {}", ports::PROMETHEUS),
                Some("admin"),
            );
        }
    }
}

/// The ruleset, and the service that loads it at boot (a SysV script and a systemd
/// unit).
pub(super) fn firewall_files(out: &mut HostFiles) -> Result<()> {
    let mut rules = out.file("firewall.nft", paths::FIREWALL.into(), Service::Firewall)?;
    rules.mode = 0o640;
    out.files.push(rules);
    let mut init = builtin(
        paths::FIREWALL_INIT.into(),
        FIREWALL_INIT.into(),
        0o755,
        Service::Firewall,
    );
    init.init = Some(Init::Sysv);
    let mut unit = builtin(
        paths::FIREWALL_UNIT.into(),
        FIREWALL_UNIT.into(),
        0o644,
        Service::Firewall,
    );
    unit.init = Some(Init::Systemd);
    out.files.extend([init, unit]);
    // Last: the fresh-connection test after it then covers the whole change.
    out.services.push(Service::Firewall);
    Ok(())
}

/// Loads the firewall at boot on hosts without systemd (and is how the tool loads it).
const FIREWALL_INIT: &str = r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          foobar-firewall
# Required-Start:    $local_fs
# Required-Stop:     $local_fs
# Default-Start:     2 3 4 5
# Default-Stop:
# Short-Description: foobar-infra host firewall (nftables table inet foobar)
### END INIT INFO
# Managed by foobar-infra. Touches only the table inet foobar, never the whole ruleset.
RULES=/etc/foobar/firewall.nft
case "$1" in
    start|reload|restart|force-reload)
        if [ ! -f "$RULES" ]; then
            # no rules file (being removed): no table either
            /usr/sbin/nft list table inet foobar >/dev/null 2>&1 || exit 0
            exec /usr/sbin/nft delete table inet foobar
        fi
        exec /usr/sbin/nft -f "$RULES" ;;
    stop)
        /usr/sbin/nft list table inet foobar >/dev/null 2>&1 || exit 0
        exec /usr/sbin/nft delete table inet foobar ;;
    status)
        exec /usr/sbin/nft list table inet foobar >/dev/null 2>&1 ;;
    *)
        echo "Usage: $0 {start|stop|reload|restart|status}" >&2
        exit 3 ;;
esac
"#;

/// The same on systemd hosts.
const FIREWALL_UNIT: &str = r#"# Managed by foobar-infra: the host firewall (nftables table inet foobar).
[Unit]
Description=foobar-infra host firewall
Wants=network-pre.target
Before=network-pre.target
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/foobar/firewall.nft
ExecReload=/usr/sbin/nft -f /etc/foobar/firewall.nft
ExecStop=/bin/sh -c '/usr/sbin/nft list table inet foobar >/dev/null 2>&1 && /usr/sbin/nft delete table inet foobar || true'

[Install]
WantedBy=sysinit.target
"#;
