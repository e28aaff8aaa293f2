//! Rendering: from the inventory to a [`Plan`]. Everything a template needs (backend
//! lists, server ids, which host is primary) is computed here in a typed context, so
//! templates stay data-only. Pure: no network, no files written.

mod context;
mod database;
mod firewall;
mod monitoring;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::inventory::{Flavor, Host, Inventory, Role, TlsSettings};
use crate::plan::{HostPlan, Init, Listen, ManagedFile, Plan, ReleasePlan, Service};
use crate::templates::Templates;
use context::{app_ctx, lb_ctx, tls_pem_path, vip_ctx, web_ctx, AppCtx, LbCtx, VipCtx, WebCtx};
use database::{app_db_ctx, db_ctx, db_plan, AppDbCtx, DbCtx};
use firewall::{fw_ctx, FwCtx};
use monitoring::{metrics_ctx, mon_ctx, MetricsCtx, MonCtx};

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

/// The ring of haproxy.cfg that keeps the request log in memory when the canary judges
/// a p95 (`rollout.max_p95_ms`); the agent reads it with `show events`.
pub const RESPONSE_TIME_RING: &str = "foobar-response-times";

/// The ring's size, bytes: about 20,000 requests of HAProxy's httplog lines; older
/// lines give way to newer ones.
pub const RESPONSE_TIME_RING_SIZE: u32 = 4 << 20;

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
        canary: None,
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

fn render_host(
    inv: &Inventory,
    host: &Host,
    templates: &Templates,
    release: Option<&ReleasePlan>,
) -> Result<HostPlan> {
    let with_app = host.has(Role::Web) && release.is_some();
    let ctx = tera::Context::from_serialize(host_ctx(inv, host, with_app))
        .context("building the template context")?;
    let mut out = HostFiles {
        templates,
        ctx,
        files: Vec::new(),
        services: Vec::new(),
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
        out.push(template, path.into(), service)?;
        out.services.push(service);
    }
    if host.has(Role::Web) {
        out.push("nginx.conf", paths::NGINX_CONF.into(), Service::Nginx)?;
        out.push(
            "nginx-site.conf",
            format!("{}/{}.conf", paths::NGINX_SITES, inv.domain),
            Service::Nginx,
        )?;
        out.services.push(Service::Nginx);
    }
    if with_app {
        app_files(inv, &mut out)?;
    }
    if host.has(Role::Lb) {
        balancer_files(inv, &mut out)?;
    }
    if let Some(m) = &inv.monitoring {
        monitoring::monitoring_files(inv, m, host, &mut out)?;
    }
    if inv.firewall.is_some() {
        firewall::firewall_files(&mut out)?;
    }
    Ok(HostPlan {
        firewall_guard_s: inv.firewall.as_ref().map(|f| f.rollback_after),
        host: host.clone(),
        files: out.files,
        services: out.services,
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

/// What the templates of one host see.
fn host_ctx<'a>(inv: &'a Inventory, host: &'a Host, with_app: bool) -> Ctx<'a> {
    let mut server_names = vec![inv.domain.as_str()];
    server_names.extend(inv.aliases.iter().map(String::as_str));
    Ctx {
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
        app: with_app.then(|| app_ctx(inv)),
        app_db: if with_app {
            app_db_ctx(inv, host)
        } else {
            None
        },
        vip: vip_ctx(inv, host),
        fw: fw_ctx(inv, host),
        metrics: metrics_ctx(inv),
        mon: mon_ctx(inv, host),
    }
}

/// The files of one host as they are rendered, and the services they belong to, in
/// the order the services are reloaded.
struct HostFiles<'a> {
    templates: &'a Templates,
    ctx: tera::Context,
    files: Vec<ManagedFile>,
    services: Vec<Service>,
}

impl HostFiles<'_> {
    /// A template rendered with the host's context into a file owned by root, 0644.
    fn file(&self, template: &str, path: String, service: Service) -> Result<ManagedFile> {
        Ok(ManagedFile {
            content: self.templates.render(template, &self.ctx)?,
            path,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            service,
            template: template.into(),
            init: None,
        })
    }

    /// The same, added to the host's files.
    fn push(&mut self, template: &str, path: String, service: Service) -> Result<()> {
        let file = self.file(template, path, service)?;
        self.files.push(file);
        Ok(())
    }
}

/// The application's settings and its service (a SysV script and a systemd unit).
fn app_files(inv: &Inventory, out: &mut HostFiles) -> Result<()> {
    let mut ini = out.file("app.ini", paths::APP_INI.into(), Service::App)?;
    ini.mode = 0o640;
    ini.group = inv.app.user.clone();
    let mut init = out.file("foobar-app.init", paths::APP_INIT.into(), Service::App)?;
    init.mode = 0o755;
    init.init = Some(Init::Sysv);
    let mut unit = out.file("foobar-app.service", paths::APP_UNIT.into(), Service::App)?;
    unit.init = Some(Init::Systemd);
    out.files.extend([ini, init, unit]);
    out.services.push(Service::App);
    Ok(())
}

/// HAProxy's configuration and certificate, and keepalived's with a floating address.
fn balancer_files(inv: &Inventory, out: &mut HostFiles) -> Result<()> {
    out.push("haproxy.cfg", paths::HAPROXY_CFG.into(), Service::Haproxy)?;
    if let Some(t) = &inv.tls {
        out.files.push(tls_pem(inv, t)?);
    }
    out.services.push(Service::Haproxy);
    if inv.vip.is_some() {
        out.push(
            "keepalived.conf",
            paths::KEEPALIVED_CONF.into(),
            Service::Keepalived,
        )?;
        out.files.push(builtin(
            paths::KEEPALIVED_CHECK.into(),
            "#!/bin/sh\n# Managed by foobar-infra: is HAProxy running?\n\
             [ -f /run/haproxy.pid ] && kill -0 \"$(cat /run/haproxy.pid)\" 2>/dev/null\n"
                .into(),
            0o755,
            Service::Keepalived,
        ));
        out.services.push(Service::Keepalived);
    }
    Ok(())
}

/// HAProxy's certificate chain and key in one PEM: the key stays a placeholder until
/// apply resolves it in memory.
fn tls_pem(inv: &Inventory, t: &TlsSettings) -> Result<ManagedFile> {
    let cert = std::fs::read_to_string(&t.cert)
        .with_context(|| format!("reading the certificate {}", t.cert.display()))?;
    if cert.contains("{{secret:") {
        anyhow::bail!(
            "{}: secret placeholder text in a certificate",
            t.cert.display()
        );
    }
    Ok(ManagedFile {
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
