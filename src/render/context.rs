//! The template context of the load balancers (HAProxy, keepalived), the web servers
//! (nginx) and the application: what their templates see, computed from the inventory.

use serde::Serialize;

use super::{paths, HAPROXY_BIND};
use crate::inventory::{Host, Inventory, PoolMode, Role};

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
pub(super) struct LbCtx<'a> {
    tls: Option<TlsCtx>,
    bind: &'static str,
    balance: &'static str,
    mode: &'static str,
    maxconn: u32,
    stats_port: u16,
    health_check: HealthCtx<'a>,
    timeouts: TimeoutsCtx<'a>,
    backends: Vec<Backend>,
    /// The request log kept in a ring for the canary's p95 (only with max_p95_ms).
    response_times: Option<RingCtx>,
}

#[derive(Serialize)]
struct RingCtx {
    name: &'static str,
    size: u32,
}

#[derive(Serialize)]
pub(super) struct WebCtx<'a> {
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
pub(super) struct AppCtx<'a> {
    user: &'a str,
    root: &'a str,
    port: u16,
    workers: u32,
    /// Empty: the app names its release from the directory it runs from.
    release: &'static str,
}

#[derive(Serialize)]
pub(super) struct VipCtx {
    address: String,
    prefix: u8,
    interface: String,
    router_id: u8,
    priority: u32,
    peers: Vec<String>,
    check_script: &'static str,
}

pub(super) fn lb_ctx(inv: &Inventory) -> LbCtx<'_> {
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
        response_times: (inv.rollout.as_ref())
            .is_some_and(|r| r.max_p95_ms.is_some())
            .then_some(RingCtx {
                name: super::RESPONSE_TIME_RING,
                size: super::RESPONSE_TIME_RING_SIZE,
            }),
    }
}

/// The VRRP settings of one load balancer: the first in the inventory has the highest
/// priority and holds the address while it runs.
pub(super) fn vip_ctx(inv: &Inventory, host: &Host) -> Option<VipCtx> {
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

/// Where HAProxy reads the certificate and key (one PEM, mode 0600).
pub(super) fn tls_pem_path(inv: &Inventory) -> String {
    format!("{}/{}.pem", paths::HAPROXY_CERTS, inv.domain)
}

pub(super) fn app_ctx(inv: &Inventory) -> AppCtx<'_> {
    AppCtx {
        user: &inv.app.user,
        root: &inv.app.root,
        port: inv.app.port,
        workers: inv.app.workers,
        release: "",
    }
}

pub(super) fn web_ctx(inv: &Inventory) -> WebCtx<'_> {
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
