//! The rendered plan: for each host, the files it must have (content with secret
//! placeholders, owner, mode) and the service each file belongs to. Pure data, no I/O.

use serde::{Deserialize, Serialize};

use crate::inventory::{Flavor, Host};

/// A service the tool manages on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    Haproxy,
    Nginx,
    Mariadb,
    Mysql,
    /// The application server (gunicorn).
    #[serde(rename = "foobar-app")]
    App,
    /// VRRP for the load balancers' floating address.
    Keepalived,
    /// The host firewall (nftables table `inet foobar`).
    #[serde(rename = "foobar-firewall")]
    Firewall,
    /// Prometheus on the monitoring hosts.
    Prometheus,
    #[serde(rename = "prometheus-node-exporter")]
    NodeExporter,
    #[serde(rename = "prometheus-nginx-exporter")]
    NginxExporter,
    #[serde(rename = "prometheus-mysqld-exporter")]
    MysqldExporter,
    /// Probes HTTPS for the certificate-expiry alert.
    #[serde(rename = "prometheus-blackbox-exporter")]
    BlackboxExporter,
}

/// The init system a host runs; some files exist for only one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    Sysv,
}

/// What a changed file asks of its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    /// The service rereads its config without dropping connections.
    Reload,
    /// The service must be restarted to see the change.
    Restart,
    /// The service is not running; it is started.
    Start,
    /// The host no longer has the role the service belongs to.
    Stop,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Reload => "reload",
            ServiceAction::Restart => "restart",
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
        }
    }
}

impl Service {
    /// The init script / systemd unit name (src/services.rs, the table).
    pub fn unit(self) -> &'static str {
        crate::services::spec(self).unit
    }

    /// Whether a reload rereads this service's config (src/services.rs, the table).
    pub fn on_change(self) -> ServiceAction {
        crate::services::spec(self).on_change
    }

    /// The Debian packages the service needs.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Service::Haproxy => &["haproxy"],
            Service::Nginx => &["nginx"],
            Service::Mariadb => &["mariadb-server"],
            Service::Mysql => &["mysql-server"],
            Service::App => &["gunicorn", "python3-pymysql"],
            Service::Keepalived => &["keepalived"],
            Service::Firewall => &["nftables"],
            Service::Prometheus => &["prometheus"],
            Service::NodeExporter => &["prometheus-node-exporter"],
            Service::NginxExporter => &["prometheus-nginx-exporter"],
            Service::MysqldExporter => &["prometheus-mysqld-exporter"],
            Service::BlackboxExporter => &["prometheus-blackbox-exporter"],
        }
    }

    pub fn for_flavor(flavor: Flavor) -> Service {
        match flavor {
            Flavor::Mariadb => Service::Mariadb,
            Flavor::Mysql8 => Service::Mysql,
        }
    }

    pub fn is_database(self) -> bool {
        matches!(self, Service::Mariadb | Service::Mysql)
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.unit())
    }
}

/// One file the tool manages on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedFile {
    /// Absolute path on the host.
    pub path: String,
    /// Rendered text; secrets appear as `{{secret:NAME}}` placeholders.
    pub content: String,
    /// Octal mode such as 0o644.
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub service: Service,
    /// The template it came from.
    pub template: String,
    /// Only on hosts with this init system (None: everywhere).
    #[serde(default)]
    pub init: Option<Init>,
}

impl ManagedFile {
    pub fn mode_string(&self) -> String {
        format!("{:04o}", self.mode)
    }
}

/// A database account the tool manages (on the primary; replicas get it by replication).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DbUser {
    pub user: String,
    /// The client address the account is for.
    pub host: String,
    /// The secret holding its password.
    pub secret: String,
    /// e.g. "SELECT, INSERT ON `foobar`.*"
    pub grants: Vec<String>,
}

/// Where a replica replicates from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrimaryRef {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub secret: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbRole {
    Primary,
    Replica,
}

/// What the database on a host must hold.
#[derive(Clone, Debug, Serialize)]
pub struct DbPlan {
    pub role: DbRole,
    pub database: String,
    /// Accounts: created on the primary, and locally when a replica is seeded.
    pub users: Vec<DbUser>,
    /// For a replica: its primary.
    pub primary: Option<PrimaryRef>,
    /// SQL creating the application's tables (run on the primary when one is missing).
    pub schema: Option<String>,
    pub tables: Vec<String>,
}

/// Everything one host must look like.
#[derive(Clone, Debug, Serialize)]
pub struct HostPlan {
    pub host: Host,
    pub files: Vec<ManagedFile>,
    /// Services this host runs, in the order they are acted on.
    pub services: Vec<Service>,
    pub db: Option<DbPlan>,
    /// The application release this web server serves.
    pub release: Option<ReleasePlan>,
    /// System users the host needs (created before files owned by them are written).
    pub users: Vec<String>,
    /// With a firewall: seconds after which the host restores its previous ruleset
    /// unless a fresh SSH connection confirmed the new one.
    pub firewall_guard_s: Option<u64>,
    /// The TCP listeners its services need (no other process may hold them).
    pub listens: Vec<Listen>,
}

/// A TCP port a service of the host listens on, and the address it binds as its
/// config says (0.0.0.0: every IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Listen {
    pub port: u16,
    pub address: std::net::IpAddr,
    pub service: Service,
}

/// An application release: the files, packed, and their content hash as id.
#[derive(Clone, Debug, Serialize)]
pub struct ReleasePlan {
    /// Short content hash of the application files.
    pub id: String,
    /// ROOT/releases/ID, ROOT/current.
    pub root: String,
    pub keep: u32,
    /// The files as an uncompressed tar (deterministic).
    #[serde(skip)]
    pub tar: std::sync::Arc<Vec<u8>>,
    pub files: usize,
}

impl HostPlan {
    /// The host alone: no file, service, database, release or user of its own (a
    /// host being pruned, a load balancer outside `--limit`).
    pub fn bare(host: Host) -> HostPlan {
        HostPlan {
            host,
            files: Vec::new(),
            services: Vec::new(),
            db: None,
            release: None,
            users: Vec::new(),
            firewall_guard_s: None,
            listens: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.host.name
    }

    pub fn file(&self, path: &str) -> Option<&ManagedFile> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn packages(&self) -> Vec<&'static str> {
        self.services
            .iter()
            .flat_map(|s| s.packages().iter().copied())
            .collect()
    }
}

/// The rendered plan for the whole inventory, hosts in inventory order.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub domain: String,
    pub hosts: Vec<HostPlan>,
    /// The web servers the load balancers balance over: every web host of the
    /// inventory, whatever `--limit` keeps in `hosts` (the topology diff compares
    /// HAProxy's servers with these, not with the hosts of this run).
    #[serde(skip)]
    pub backends: Vec<String>,
    /// The load balancers `--limit` left out, when the run has web servers: they only
    /// drain and restore those (see `run::outside`); a session's remotes for them follow
    /// the remotes of `hosts`.
    #[serde(skip)]
    pub outside_balancers: Vec<HostPlan>,
    /// The canary stage of a release rollout (the inventory's `rollout:`, or
    /// `apply --canary N`; set by apply); none: every web server in turn.
    #[serde(skip)]
    pub canary: Option<crate::run::canary::Canary>,
}

impl Plan {
    /// The host whose database is the primary.
    pub fn db_primary(&self) -> Option<&HostPlan> {
        self.hosts
            .iter()
            .find(|h| h.db.as_ref().is_some_and(|d| d.role == DbRole::Primary))
    }

    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| h.host.name == name)
    }
}
