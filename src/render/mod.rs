//! Rendering: from the inventory to a [`Plan`]. Everything a template needs (backend
//! lists, server ids, which host is primary) is computed here in a typed context, so
//! templates stay data-only. Pure: no network, no files written.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::inventory::{Flavor, Host, Inventory, PoolMode, Role};
use crate::plan::{
    DbPlan, DbRole, DbUser, HostPlan, Init, Listen, ManagedFile, Plan, PrimaryRef, ReleasePlan,
    Service,
};
use crate::templates::Templates;

/// Where the tool installs each managed file.
pub mod paths {
    pub const HAPROXY_CFG: &str = "/etc/haproxy/haproxy.cfg";
    pub const HAPROXY_CERTS: &str = "/etc/haproxy/certs";
    pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";
    pub const KEEPALIVED_CHECK: &str = "/etc/keepalived/haproxy-alive";
    pub const NGINX_ROOT: &str = "/etc/nginx";
    pub const NGINX_CONF: &str = "/etc/nginx/nginx.conf";
    pub const NGINX_SITES: &str = "/etc/nginx/sites-foobar";
    pub const MARIADB_CNF: &str = "/etc/mysql/mariadb.conf.d/60-foobar.cnf";
    pub const MYSQL8_CNF: &str = "/etc/mysql/mysql.conf.d/60-foobar.cnf";
    pub const APP_INI: &str = "/etc/foobar/app.ini";
    pub const APP_INIT: &str = "/etc/init.d/foobar-app";
    pub const APP_UNIT: &str = "/etc/systemd/system/foobar-app.service";
    pub const FIREWALL: &str = "/etc/foobar/firewall.nft";
    pub const PROMETHEUS_YML: &str = "/etc/prometheus/prometheus.yml";
    pub const PROMETHEUS_RULES: &str = "/etc/prometheus/foobar-rules.yml";
    pub const BLACKBOX_YML: &str = "/etc/prometheus/blackbox.yml";
    pub const MYSQLD_EXPORTER_CNF: &str = "/etc/prometheus/mysqld-exporter.cnf";
    /// Debian's per-service settings (`ARGS=...`), read by the init scripts.
    pub fn default_file(service: &str) -> String {
        format!("/etc/default/{service}")
    }
    pub const FIREWALL_INIT: &str = "/etc/init.d/foobar-firewall";
    pub const FIREWALL_UNIT: &str = "/etc/systemd/system/foobar-firewall.service";
}

/// Ports of the monitoring exporters (their Debian packages' defaults).
pub mod ports {
    pub const NODE_EXPORTER: u16 = 9100;
    pub const MYSQLD_EXPORTER: u16 = 9104;
    pub const NGINX_EXPORTER: u16 = 9113;
    pub const PROMETHEUS: u16 = 9090;
    pub const BLACKBOX_EXPORTER: u16 = 9115;
    /// nginx's stub_status, on localhost only.
    pub const NGINX_STATUS: u16 = 8081;
}

#[derive(Serialize)]
struct HostCtx<'a> {
    name: &'a str,
    address: String,
    roles: Vec<&'static str>,
}

#[derive(Serialize)]
struct Backend {
    name: String,
    address: String,
    port: u16,
    backup: bool,
}

#[derive(Serialize)]
struct HealthCtx<'a> {
    path: &'a str,
    interval: &'a str,
    rise: u32,
    fall: u32,
}

#[derive(Serialize)]
struct TimeoutsCtx<'a> {
    connect: &'a str,
    client: &'a str,
    server: &'a str,
}

#[derive(Serialize)]
struct TlsCtx {
    pem: String,
    hsts_max_age: u64,
}

#[derive(Serialize)]
struct LbCtx<'a> {
    tls: Option<TlsCtx>,
    bind: &'static str,
    balance: &'static str,
    mode: &'static str,
    maxconn: u32,
    stats_port: u16,
    health_check: HealthCtx<'a>,
    timeouts: TimeoutsCtx<'a>,
    backends: Vec<Backend>,
}

#[derive(Serialize)]
struct WebCtx<'a> {
    /// The application server runs behind nginx (app.source is set).
    app: bool,
    app_port: u16,
    app_root: &'a str,
    public_root: String,
    health_path: &'a str,
    client_max_body_size: &'a str,
    worker_connections: u32,
}

#[derive(Serialize)]
struct DbCtx<'a> {
    flavor: &'static str,
    server_id: u32,
    bind_address: String,
    port: u16,
    primary: &'a str,
    log_bin: &'static str,
    relay_log: &'static str,
    innodb_buffer_pool_size: &'a str,
}

#[derive(Serialize)]
struct AppCtx<'a> {
    user: &'a str,
    root: &'a str,
    port: u16,
    workers: u32,
    /// Empty: the app names its release from the directory it runs from.
    release: &'static str,
}

/// Where the application on a web server writes and reads.
#[derive(Serialize)]
struct AppDbCtx<'a> {
    write_host: String,
    write_port: u16,
    read_host: String,
    read_port: u16,
    name: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct VipCtx {
    address: String,
    prefix: u8,
    interface: String,
    router_id: u8,
    priority: u32,
    peers: Vec<String>,
    check_script: &'static str,
}

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
struct FwCtx {
    sets: Vec<FwSet>,
    rules: Vec<FwRule>,
}

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
struct MonCtx<'a> {
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
struct MetricsCtx {
    /// HAProxy's exporter port (load balancers).
    haproxy_port: u16,
    /// nginx stub_status on localhost (web servers).
    nginx_status_port: u16,
    /// Who may scrape.
    monitors: Vec<String>,
}

#[derive(Serialize)]
struct Ctx<'a> {
    domain: &'a str,
    server_names: Vec<&'a str>,
    host: HostCtx<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lb: Option<LbCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    web: Option<WebCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    db: Option<DbCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<AppCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_db: Option<AppDbCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip: Option<VipCtx>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fw: Option<FwCtx>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsCtx>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mon: Option<MonCtx<'a>>,
}

/// Where HAProxy's public frontend binds: every IPv4 address (with a VIP too: the
/// address floats, the bind does not change).
const HAPROXY_BIND: &str = "*";

fn lb_ctx(inv: &Inventory) -> LbCtx<'_> {
    let h = &inv.haproxy;
    let backends = inv
        .with_role(Role::Web)
        .map(|w| Backend {
            name: w.name.clone(),
            address: w.address.to_string(),
            port: 80,
            backup: h.mode == PoolMode::ActivePassive && h.passive.contains(&w.name),
        })
        .collect();
    LbCtx {
        tls: inv.tls.as_ref().map(|t| TlsCtx {
            pem: tls_pem_path(inv),
            hsts_max_age: t.hsts_max_age,
        }),
        bind: HAPROXY_BIND,
        balance: match h.balance {
            crate::inventory::Balance::Roundrobin => "roundrobin",
            crate::inventory::Balance::Leastconn => "leastconn",
            crate::inventory::Balance::Source => "source",
        },
        mode: match h.mode {
            PoolMode::ActiveActive => "active-active",
            PoolMode::ActivePassive => "active-passive",
        },
        maxconn: h.maxconn,
        stats_port: h.stats_port,
        health_check: HealthCtx {
            path: &h.health_check.path,
            interval: &h.health_check.interval,
            rise: h.health_check.rise,
            fall: h.health_check.fall,
        },
        timeouts: TimeoutsCtx {
            connect: &h.timeouts.connect,
            client: &h.timeouts.client,
            server: &h.timeouts.server,
        },
        backends,
    }
}

/// The VRRP settings of one load balancer: the first in the inventory has the highest
/// priority and holds the address while it runs.
fn vip_ctx(inv: &Inventory, host: &Host) -> Option<VipCtx> {
    let v = inv.vip.as_ref()?;
    if !host.has(Role::Lb) {
        return None;
    }
    let lbs: Vec<&Host> = inv.with_role(Role::Lb).collect();
    let rank = lbs.iter().position(|h| h.name == host.name)? as u32;
    Some(VipCtx {
        address: v.address.to_string(),
        prefix: v.prefix,
        interface: v.interface.clone(),
        router_id: v.router_id,
        priority: 150u32.saturating_sub(rank * 10).max(1),
        peers: lbs
            .iter()
            .filter(|h| h.name != host.name)
            .map(|h| h.address.to_string())
            .collect(),
        check_script: paths::KEEPALIVED_CHECK,
    })
}

/// The firewall of one host: who may reach which of its ports, by role.
fn fw_ctx(inv: &Inventory, host: &Host) -> Option<FwCtx> {
    let fw = inv.firewall.as_ref()?;
    let addrs = |pred: &dyn Fn(&Host) -> bool| -> Vec<String> {
        inv.hosts
            .iter()
            .filter(|h| pred(h))
            .map(|h| h.address.to_string())
            .collect()
    };
    // Source groups, each split into an IPv4 and an IPv6 set (nft sets have one type).
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
    let refs = |group: &str| -> Vec<FwSetRef> {
        sets.iter()
            .filter(|s| s.name.rsplit_once('_').is_some_and(|(g, _)| g == group))
            .map(|s| FwSetRef {
                family: if s.kind == "ipv4_addr" { "ip" } else { "ip6" },
                name: s.name.clone(),
            })
            .collect()
    };
    let mut rules = Vec::new();
    let mut rule = |comment: String, matcher: String, from: Option<&str>| {
        let sets = from.map(refs).unwrap_or_default();
        // A rule for a group with no members would accept nothing: leave it out.
        if from.is_none() || !sets.is_empty() {
            rules.push(FwRule {
                comment,
                matcher,
                any: from.is_none(),
                sets,
            });
        }
    };
    rule(
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
        rule(
            "the site, from anywhere".into(),
            format!("tcp dport {ports}"),
            None,
        );
        if inv.vip.is_some() {
            rule(
                "VRRP between the load balancers (keepalived)".into(),
                "meta l4proto 112".into(), // vrrp, by number (no /etc/protocols needed)
                Some("balancers"),
            );
        }
    }
    if host.has(Role::Web) {
        rule(
            "HTTP from the load balancers".into(),
            "tcp dport 80".into(),
            Some("balancers"),
        );
    }
    if host.is_db() {
        rule(
            "MySQL from the application servers and the other database hosts".into(),
            format!("tcp dport {}", inv.mysql.port),
            Some("db_clients"),
        );
    }
    if let Some(m) = &inv.monitoring {
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
        rule(
            "metrics, from the monitoring hosts".into(),
            format!("tcp dport {{ {} }}", list.join(", ")),
            Some("monitors"),
        );
        if host.has(Role::Monitor) {
            rule(
                "Prometheus, from the admin networks".into(),
                format!("tcp dport {}", ports::PROMETHEUS),
                Some("admin"),
            );
        }
    }
    Some(FwCtx { sets, rules })
}

fn metrics_ctx(inv: &Inventory) -> Option<MetricsCtx> {
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

fn mon_ctx<'a>(inv: &'a Inventory, host: &Host) -> Option<MonCtx<'a>> {
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

/// Where HAProxy reads the certificate and key (one PEM, mode 0600).
fn tls_pem_path(inv: &Inventory) -> String {
    format!("{}/{}.pem", paths::HAPROXY_CERTS, inv.domain)
}

fn web_ctx(inv: &Inventory) -> WebCtx<'_> {
    WebCtx {
        app: inv.app.source.is_some(),
        app_port: inv.app.port,
        app_root: &inv.app.root,
        public_root: format!("{}/current/public", inv.app.root),
        health_path: &inv.haproxy.health_check.path,
        client_max_body_size: &inv.nginx.client_max_body_size,
        worker_connections: inv.nginx.worker_connections,
    }
}

fn db_ctx<'a>(inv: &'a Inventory, host: &Host) -> DbCtx<'a> {
    DbCtx {
        flavor: match inv.mysql.flavor {
            Flavor::Mariadb => "mariadb",
            Flavor::Mysql8 => "mysql8",
        },
        server_id: host.server_id,
        bind_address: host.address.to_string(),
        port: inv.mysql.port,
        primary: inv.db_primary().map(|p| p.name.as_str()).unwrap_or(""),
        log_bin: "mysql-bin",
        relay_log: "relay-bin",
        innodb_buffer_pool_size: &inv.mysql.innodb_buffer_pool_size,
    }
}

/// Renders every host's files.
pub fn render(inv: &Inventory, templates: &Templates) -> Result<Plan> {
    let release = match &inv.app.source {
        Some(dir) => {
            let packed = crate::release::pack(dir)
                .context("packing the application release (app.source)")?;
            Some(ReleasePlan {
                id: packed.id,
                root: inv.app.root.clone(),
                keep: inv.app.keep_releases,
                tar: std::sync::Arc::new(packed.tar),
                files: packed.files,
            })
        }
        None => None,
    };
    let hosts = inv
        .hosts
        .iter()
        .map(|h| {
            render_host(inv, h, templates, release.as_ref())
                .with_context(|| format!("rendering host {}", h.name))
        })
        .collect::<Result<_>>()?;
    Ok(Plan {
        domain: inv.domain.clone(),
        hosts,
        backends: (inv.hosts.iter())
            .filter(|h| h.has(Role::Web))
            .map(|h| h.name.clone())
            .collect(),
        outside_balancers: Vec::new(),
    })
}

/// The plan of the lab's inventory (lab/inventory.yaml) with the built-in templates.
#[cfg(test)]
pub(crate) fn lab_plan() -> Plan {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let inv = Inventory::load(&root.join("lab/inventory.yaml")).unwrap();
    let templates = crate::templates::Templates::load(None).unwrap();
    render(&inv, &templates).unwrap()
}

/// Where a web server's application writes (the primary) and reads (its own database
/// when it has one, else the primary).
fn app_db_ctx<'a>(inv: &'a Inventory, host: &Host) -> Option<AppDbCtx<'a>> {
    let primary = inv.db_primary()?;
    let read = if host.is_db() { host } else { primary };
    Some(AppDbCtx {
        write_host: primary.address.to_string(),
        write_port: inv.mysql.port,
        read_host: read.address.to_string(),
        read_port: inv.mysql.port,
        name: &inv.mysql.database,
        user: &inv.mysql.app_user,
    })
}

fn render_host(
    inv: &Inventory,
    host: &Host,
    templates: &Templates,
    release: Option<&ReleasePlan>,
) -> Result<HostPlan> {
    let with_app = host.has(Role::Web) && release.is_some();
    let mut server_names = vec![inv.domain.as_str()];
    server_names.extend(inv.aliases.iter().map(String::as_str));
    let ctx = Ctx {
        domain: &inv.domain,
        server_names,
        host: HostCtx {
            name: &host.name,
            address: host.address.to_string(),
            roles: host.roles.iter().map(|r| r.as_str()).collect(),
        },
        lb: host.has(Role::Lb).then(|| lb_ctx(inv)),
        web: host.has(Role::Web).then(|| web_ctx(inv)),
        db: host.is_db().then(|| db_ctx(inv, host)),
        app: with_app.then(|| AppCtx {
            user: &inv.app.user,
            root: &inv.app.root,
            port: inv.app.port,
            workers: inv.app.workers,
            release: "",
        }),
        app_db: if with_app {
            app_db_ctx(inv, host)
        } else {
            None
        },
        vip: vip_ctx(inv, host),
        fw: fw_ctx(inv, host),
        metrics: metrics_ctx(inv),
        mon: mon_ctx(inv, host),
    };
    let ctx = tera::Context::from_serialize(&ctx).context("building the template context")?;

    let mut files = Vec::new();
    let mut services = Vec::new();
    let file = |template: &str, path: String, service: Service| -> Result<ManagedFile> {
        Ok(ManagedFile {
            content: templates.render(template, &ctx)?,
            path,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            service,
            template: template.into(),
            init: None,
        })
    };

    // Databases first: their restarts are the slowest and are ordered separately.
    if host.is_db() {
        let service = Service::for_flavor(inv.mysql.flavor);
        let template = if host.has(Role::DbPrimary) {
            "mysql-primary.cnf"
        } else {
            "mysql-replica.cnf"
        };
        let path = match inv.mysql.flavor {
            Flavor::Mariadb => paths::MARIADB_CNF,
            Flavor::Mysql8 => paths::MYSQL8_CNF,
        };
        files.push(file(template, path.into(), service)?);
        services.push(service);
    }
    if host.has(Role::Web) {
        files.push(file(
            "nginx.conf",
            paths::NGINX_CONF.into(),
            Service::Nginx,
        )?);
        files.push(file(
            "nginx-site.conf",
            format!("{}/{}.conf", paths::NGINX_SITES, inv.domain),
            Service::Nginx,
        )?);
        services.push(Service::Nginx);
    }
    if with_app {
        let mut ini = file("app.ini", paths::APP_INI.into(), Service::App)?;
        ini.mode = 0o640;
        ini.group = inv.app.user.clone();
        let mut init = file("foobar-app.init", paths::APP_INIT.into(), Service::App)?;
        init.mode = 0o755;
        init.init = Some(Init::Sysv);
        let mut unit = file("foobar-app.service", paths::APP_UNIT.into(), Service::App)?;
        unit.init = Some(Init::Systemd);
        files.extend([ini, init, unit]);
        services.push(Service::App);
    }
    if host.has(Role::Lb) {
        files.push(file(
            "haproxy.cfg",
            paths::HAPROXY_CFG.into(),
            Service::Haproxy,
        )?);
        if let Some(t) = &inv.tls {
            let cert = std::fs::read_to_string(&t.cert)
                .with_context(|| format!("reading the certificate {}", t.cert.display()))?;
            if cert.contains("{{secret:") {
                anyhow::bail!(
                    "{}: secret placeholder text in a certificate",
                    t.cert.display()
                );
            }
            // The key stays a placeholder until apply resolves it in memory.
            files.push(ManagedFile {
                path: tls_pem_path(inv),
                content: format!(
                    "{}\n{}\n",
                    cert.trim_end(),
                    crate::secrets::placeholder(&t.key)
                ),
                mode: 0o600,
                owner: "root".into(),
                group: "root".into(),
                service: Service::Haproxy,
                template: "tls.cert + secret tls.key".into(),
                init: None,
            });
        }
        services.push(Service::Haproxy);
        if inv.vip.is_some() {
            files.push(file(
                "keepalived.conf",
                paths::KEEPALIVED_CONF.into(),
                Service::Keepalived,
            )?);
            files.push(ManagedFile {
                path: paths::KEEPALIVED_CHECK.into(),
                content: "#!/bin/sh\n# Managed by foobar-infra: is HAProxy running?\n\
                          [ -f /run/haproxy.pid ] && kill -0 \"$(cat /run/haproxy.pid)\" 2>/dev/null\n"
                    .into(),
                mode: 0o755,
                owner: "root".into(),
                group: "root".into(),
                service: Service::Keepalived,
                template: "(built in)".into(),
                init: None,
            });
            services.push(Service::Keepalived);
        }
    }
    if let Some(m) = &inv.monitoring {
        monitoring_files(inv, m, host, &mut files, &mut services, &file)?;
    }
    if inv.firewall.is_some() {
        let mut rules = file("firewall.nft", paths::FIREWALL.into(), Service::Firewall)?;
        rules.mode = 0o640;
        files.push(rules);
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
        files.extend([init, unit]);
        // Last: the fresh-connection test after it then covers the whole change.
        services.push(Service::Firewall);
    }
    Ok(HostPlan {
        firewall_guard_s: inv.firewall.as_ref().map(|f| f.rollback_after),
        host: host.clone(),
        files,
        services,
        db: host.is_db().then(|| db_plan(inv, host)).transpose()?,
        release: if with_app { release.cloned() } else { None },
        users: if with_app {
            vec![inv.app.user.clone()]
        } else {
            Vec::new()
        },
        listens: listens(inv, host, with_app),
    })
}

/// The TCP listeners the host's services need, bound as the templates bind them:
/// HAProxy's frontend `www` on every address ([`HAPROXY_BIND`]) at 80, and 443 with
/// TLS; nginx's site (`listen 80`); gunicorn on 127.0.0.1 at `app.port`; the database
/// on the host's own address (`bind-address`).
fn listens(inv: &Inventory, host: &Host, with_app: bool) -> Vec<Listen> {
    use std::net::{IpAddr, Ipv4Addr};
    let every = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let listen = |port, address, service| Listen {
        port,
        address,
        service,
    };
    let mut v = Vec::new();
    if host.has(Role::Lb) {
        v.push(listen(80, every, Service::Haproxy));
        if inv.tls.is_some() {
            v.push(listen(443, every, Service::Haproxy));
        }
    }
    if host.has(Role::Web) {
        v.push(listen(80, every, Service::Nginx));
        if with_app {
            v.push(listen(
                inv.app.port,
                Ipv4Addr::LOCALHOST.into(),
                Service::App,
            ));
        }
    }
    if host.is_db() {
        let service = Service::for_flavor(inv.mysql.flavor);
        v.push(listen(inv.mysql.port, host.address, service));
    }
    v
}

/// A file the tool writes itself (no template), owned by root.
fn builtin(path: String, content: String, mode: u32, service: Service) -> ManagedFile {
    ManagedFile {
        path,
        content,
        mode,
        owner: "root".into(),
        group: "root".into(),
        service,
        template: "(built in)".into(),
        init: None,
    }
}

/// The exporters every host runs for the monitoring hosts, and Prometheus itself.
fn monitoring_files(
    inv: &Inventory,
    m: &crate::inventory::MonitoringSettings,
    host: &Host,
    files: &mut Vec<ManagedFile>,
    services: &mut Vec<Service>,
    file: &dyn Fn(&str, String, Service) -> Result<ManagedFile>,
) -> Result<()> {
    let defaults = |svc: Service, args: &str| {
        builtin(
            paths::default_file(svc.unit()),
            format!("# Managed by foobar-infra: options of {svc}.\nARGS=\"{args}\"\n"),
            0o644,
            svc,
        )
    };
    // No systemd collector: there may be no systemd (and no D-Bus) to ask.
    files.push(defaults(Service::NodeExporter, "--no-collector.systemd"));
    services.push(Service::NodeExporter);
    if host.has(Role::Web) {
        files.push(defaults(
            Service::NginxExporter,
            &format!(
                "-nginx.scrape-uri=http://127.0.0.1:{}/stub_status",
                ports::NGINX_STATUS
            ),
        ));
        services.push(Service::NginxExporter);
    }
    if host.is_db() {
        files.push(defaults(
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
        files.push(cnf);
        services.push(Service::MysqldExporter);
    }
    if host.has(Role::Monitor) {
        files.push(file(
            "prometheus.yml",
            paths::PROMETHEUS_YML.into(),
            Service::Prometheus,
        )?);
        files.push(file(
            "prometheus-rules.yml",
            paths::PROMETHEUS_RULES.into(),
            Service::Prometheus,
        )?);
        services.push(Service::Prometheus);
        if inv.tls.is_some() {
            files.push(file(
                "blackbox.yml",
                paths::BLACKBOX_YML.into(),
                Service::BlackboxExporter,
            )?);
            // Debian's init script checks this file with promtool, which rejects every
            // blackbox config: check it with the exporter itself instead.
            let mut d = defaults(
                Service::BlackboxExporter,
                &format!("--config.file {}", paths::BLACKBOX_YML),
            );
            d.content.push_str(&format!(
                "config_check() {{ /usr/bin/prometheus-blackbox-exporter --config.file={} --config.check >/dev/null 2>&1 || {{ echo \"blackbox config invalid\" >&2; exit 2; }}; }}\n",
                paths::BLACKBOX_YML
            ));
            files.push(d);
            services.push(Service::BlackboxExporter);
        }
    }
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

/// The accounts the stack needs: the application's from every web server (and the
/// database hosts themselves), replication's from every database host (so any can be
/// promoted later).
fn db_users(inv: &Inventory) -> Vec<DbUser> {
    let m = &inv.mysql;
    let mut users = Vec::new();
    let mut app_hosts: Vec<String> = inv
        .with_role(Role::Web)
        .map(|h| h.address.to_string())
        .collect();
    app_hosts.push("localhost".into());
    for h in app_hosts {
        users.push(DbUser {
            user: m.app_user.clone(),
            host: h,
            secret: "db_app_password".into(),
            grants: vec![format!(
                "SELECT, INSERT, UPDATE, DELETE ON `{}`.*",
                m.database
            )],
        });
    }
    if let Some(mon) = &inv.monitoring {
        // The MySQL exporter's account: status and replication state, no data.
        let privileges = match m.flavor {
            Flavor::Mariadb => "PROCESS, BINLOG MONITOR, SLAVE MONITOR ON *.*",
            Flavor::Mysql8 => "PROCESS, REPLICATION CLIENT ON *.*",
        };
        users.push(DbUser {
            user: mon.mysql_user.clone(),
            host: "localhost".into(),
            secret: crate::inventory::MONITOR_SECRET.into(),
            grants: vec![privileges.into()],
        });
    }
    for h in inv.hosts.iter().filter(|h| h.is_db()) {
        users.push(DbUser {
            user: m.replication_user.clone(),
            host: h.address.to_string(),
            secret: "db_replication_password".into(),
            grants: vec!["REPLICATION SLAVE ON *.*".into()],
        });
    }
    users
}

fn db_plan(inv: &Inventory, host: &Host) -> Result<DbPlan> {
    let (schema, tables) = match &inv.app.source {
        Some(dir) => {
            let path = dir.join("schema.sql");
            match std::fs::read_to_string(&path) {
                Ok(sql) => {
                    let tables = schema_tables(&sql);
                    (Some(sql), tables)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        None => (None, Vec::new()),
    };
    let primary = if host.has(Role::DbReplica) {
        inv.db_primary().map(|p| PrimaryRef {
            name: p.name.clone(),
            address: p.address.to_string(),
            port: inv.mysql.port,
            user: inv.mysql.replication_user.clone(),
            secret: "db_replication_password".into(),
        })
    } else {
        None
    };
    Ok(DbPlan {
        role: if host.has(Role::DbPrimary) {
            DbRole::Primary
        } else {
            DbRole::Replica
        },
        database: inv.mysql.database.clone(),
        users: db_users(inv),
        primary,
        schema,
        tables,
    })
}

/// Table names of `CREATE TABLE [IF NOT EXISTS] name` statements.
fn schema_tables(sql: &str) -> Vec<String> {
    let mut tables = Vec::new();
    for line in sql.lines() {
        let l = line.trim();
        let upper = l.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("CREATE TABLE ") {
            let offset = l.len() - rest.len();
            let rest = rest
                .strip_prefix("IF NOT EXISTS ")
                .map(|r| &l[l.len() - r.len()..])
                .unwrap_or(&l[offset..]);
            let name: String = rest
                .trim_start_matches('`')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                tables.push(name);
            }
        }
    }
    tables
}
