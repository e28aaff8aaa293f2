//! The inventory's settings sections (app, nginx, haproxy, mysql, vip, tls, firewall,
//! monitoring) as serde reads them, with their defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Balance, Flavor, PoolMode};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppSettings {
    pub port: u16,
    pub user: String,
    pub root: String,
    pub workers: u32,
    pub keep_releases: u32,
    pub source: Option<PathBuf>,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            port: 8000,
            user: "foobar".into(),
            root: "/srv/foobar".into(),
            workers: 2,
            keep_releases: 5,
            source: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxSettings {
    pub client_max_body_size: String,
    pub worker_connections: u32,
}

impl Default for NginxSettings {
    fn default() -> Self {
        NginxSettings {
            client_max_body_size: "10m".into(),
            worker_connections: 1024,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub path: String,
    pub interval: String,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval: "2s".into(),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect: String,
    pub client: String,
    pub server: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: "5s".into(),
            client: "30s".into(),
            server: "30s".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaproxySettings {
    pub balance: Balance,
    pub mode: PoolMode,
    /// With `active-passive`: the web servers that only serve when the others are down.
    pub passive: Vec<String>,
    pub health_check: HealthCheck,
    pub timeouts: Timeouts,
    pub stats_port: u16,
    pub maxconn: u32,
}

impl Default for HaproxySettings {
    fn default() -> Self {
        HaproxySettings {
            balance: Balance::default(),
            mode: PoolMode::default(),
            passive: Vec::new(),
            health_check: HealthCheck::default(),
            timeouts: Timeouts::default(),
            stats_port: 8404,
            maxconn: 4096,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlSettings {
    pub flavor: Flavor,
    pub port: u16,
    pub database: String,
    pub app_user: String,
    pub replication_user: String,
    pub innodb_buffer_pool_size: String,
}

impl Default for MysqlSettings {
    fn default() -> Self {
        MysqlSettings {
            flavor: Flavor::default(),
            port: 3306,
            database: "foobar".into(),
            app_user: "foobar".into(),
            replication_user: "repl".into(),
            innodb_buffer_pool_size: "256M".into(),
        }
    }
}

/// A floating address shared by the load balancers (keepalived, VRRP).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipSettings {
    pub address: IpAddr,
    /// Prefix length of the network the address is on.
    #[serde(default = "default_prefix")]
    pub prefix: u8,
    #[serde(default = "default_interface")]
    pub interface: String,
    /// VRRP virtual router id (1-255), unique on the network.
    #[serde(default = "default_router_id")]
    pub router_id: u8,
}

fn default_prefix() -> u8 {
    24
}
fn default_interface() -> String {
    "eth0".into()
}
fn default_router_id() -> u8 {
    51
}

/// HTTPS at the load balancers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain (PEM), relative to the inventory.
    pub cert: PathBuf,
    /// The name of the secret holding the private key (PEM).
    pub key: String,
    /// Strict-Transport-Security max-age, seconds.
    #[serde(default = "default_hsts")]
    pub hsts_max_age: u64,
}

fn default_hsts() -> u64 {
    31_536_000
}

/// The host firewall (nftables), on every host when the section is present.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSettings {
    /// Networks allowed to reach SSH (and Prometheus on a monitor host), as CIDRs.
    pub admin: Vec<String>,
    /// Seconds after which a host restores its previous ruleset on its own unless a
    /// fresh SSH connection has confirmed the new one.
    #[serde(default = "default_rollback_after")]
    pub rollback_after: u64,
}

fn default_rollback_after() -> u64 {
    30
}

/// Monitoring: exporters on every host, Prometheus on the `monitor` hosts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSettings {
    /// Prometheus scrape and rule evaluation interval.
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: String,
    /// How long a condition holds before its alert fires.
    #[serde(default = "default_alert_for")]
    pub alert_for: String,
    /// Replication lag (seconds) above which the lagging alert fires.
    #[serde(default = "default_max_lag")]
    pub max_replication_lag: u64,
    /// Days before a certificate's expiry at which its alert fires.
    #[serde(default = "default_cert_days")]
    pub cert_expiry_days: u64,
    /// Port of HAProxy's Prometheus exporter on the load balancers.
    #[serde(default = "default_haproxy_exporter_port")]
    pub haproxy_port: u16,
    /// The MySQL account the exporter uses (its password is the secret db_monitor_password).
    #[serde(default = "default_monitor_user")]
    pub mysql_user: String,
}

fn default_scrape_interval() -> String {
    "15s".into()
}
fn default_alert_for() -> String {
    "30s".into()
}
fn default_max_lag() -> u64 {
    30
}
fn default_cert_days() -> u64 {
    21
}
fn default_haproxy_exporter_port() -> u16 {
    8405
}
fn default_monitor_user() -> String {
    "exporter".into()
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        MonitoringSettings {
            scrape_interval: default_scrape_interval(),
            alert_for: default_alert_for(),
            max_replication_lag: default_max_lag(),
            cert_expiry_days: default_cert_days(),
            haproxy_port: default_haproxy_exporter_port(),
            mysql_user: default_monitor_user(),
        }
    }
}
