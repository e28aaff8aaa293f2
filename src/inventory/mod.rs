//! The inventory: the one YAML file that describes the stack. Owns loading, the typed
//! model and every validation rule, with errors that name file, line, column and field.
//! serde_yaml is used here and nowhere else.

mod grammar;
pub mod limits;
mod raw_secret;
mod source_map;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use source_map::Pos;
use source_map::SourceMap;

/// An inventory error a user can fix: it names the place in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .messages.join("\n"))]
pub struct InventoryError {
    pub messages: Vec<String>,
}

/// What a host does in the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Lb,
    Web,
    DbPrimary,
    DbReplica,
    Monitor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lb => "lb",
            Role::Web => "web",
            Role::DbPrimary => "db-primary",
            Role::DbReplica => "db-replica",
            Role::Monitor => "monitor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Lb,
            Role::Web,
            Role::DbPrimary,
            Role::DbReplica,
            Role::Monitor,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How HAProxy uses the web servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    #[default]
    ActiveActive,
    ActivePassive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    Roundrobin,
    Leastconn,
    Source,
}

/// Which database server the MySQL templates speak to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    #[default]
    Mariadb,
    Mysql8,
}

/// SSH settings of one host, after merging the defaults with the host's override.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    pub known_hosts: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: u64,
    /// Who opens the TCP connection under ssh (src/remote/connector.rs).
    pub connector: Connector,
}

/// Who opens an SSH connection's TCP connection: foobar-infra's connector (TCP_NODELAY
/// and immediate ACKs, as ssh's ProxyCommand) or ssh itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connector {
    #[default]
    Builtin,
    Ssh,
}

#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub name: String,
    pub address: IpAddr,
    pub roles: Vec<Role>,
    pub ssh: SshSettings,
    pub server_id: u32,
}

impl Host {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
    pub fn is_db(&self) -> bool {
        self.has(Role::DbPrimary) || self.has(Role::DbReplica)
    }
}

/// Where a secret's value comes from; the value itself is never in the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(v) => write!(f, "environment variable {v}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// The secrets the stack needs when it has databases.
pub const DB_SECRETS: [&str; 2] = ["db_app_password", "db_replication_password"];
/// The MySQL exporter's password, when a host has the role monitor.
pub const MONITOR_SECRET: &str = "db_monitor_password";

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

/// An IPv4 or IPv6 network written as ADDRESS/PREFIX (a bare address is a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
        None => max,
    };
    (prefix <= max).then_some((addr, prefix))
}

/// The validated inventory.
#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    /// The file it was read from.
    pub path: PathBuf,
    /// sha256 of the file's bytes, recorded in apply history.
    pub source_hash: String,
    pub domain: String,
    pub aliases: Vec<String>,
    /// Hosts in file order.
    pub hosts: Vec<Host>,
    /// The top-level SSH settings (for a host given on the command line).
    pub ssh: SshSettings,
    pub app: AppSettings,
    pub nginx: NginxSettings,
    pub haproxy: HaproxySettings,
    pub mysql: MysqlSettings,
    pub tls: Option<TlsSettings>,
    pub vip: Option<VipSettings>,
    pub firewall: Option<FirewallSettings>,
    /// Present when a host has the role `monitor`.
    pub monitoring: Option<MonitoringSettings>,
    pub secrets: BTreeMap<String, SecretSource>,
    /// Settings `render` accepts but no lab can test end to end (DECISIONS.md, "Host
    /// kinds"), each as a message naming file, line, column and field: the commands
    /// that lead to changing hosts refuse them ([`Inventory::refuse_untested`]).
    #[serde(skip)]
    pub untested: Vec<String>,
}

impl Inventory {
    /// Refuses an inventory with a setting no lab can test end to end: `check`,
    /// `diff`, `plan`, `apply` and the database commands call it; `render` does not.
    pub fn refuse_untested(&self) -> Result<()> {
        if self.untested.is_empty() {
            return Ok(());
        }
        anyhow::bail!("{}", self.untested.join("\n"))
    }

    /// Reads, parses and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = limits::read(path)?;
        Ok(Inventory::parse(path, &text)?)
    }

    /// Parses and validates inventory text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> std::result::Result<Inventory, InventoryError> {
        let file = path.display().to_string();
        let refuse = |messages: Vec<String>| Err(InventoryError { messages });
        if let Err(message) = limits::check(&file, text) {
            return refuse(vec![message]);
        }
        let (map, duplicates) = SourceMap::build(text);
        let placeholders = grammar::secret_placeholders(&file, &map);
        if !placeholders.is_empty() {
            return refuse(placeholders);
        }
        if !duplicates.is_empty() {
            let messages = duplicates
                .iter()
                .map(|d| {
                    let what = if d.path.starts_with("hosts.") && d.path.matches('.').count() == 1 {
                        "duplicate host name"
                    } else {
                        "duplicate key"
                    };
                    format!(
                        "{file}:{}:{}: {}: {what} (first defined at line {})",
                        d.second.line, d.second.col, d.path, d.first.line
                    )
                })
                .collect();
            return Err(InventoryError { messages });
        }
        let raw: RawInventory = serde_yaml::from_str(text).map_err(|e| InventoryError {
            messages: vec![yaml_error(&file, &e)],
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator {
            file,
            map,
            messages: Vec::new(),
        };
        let inventory = v.build(raw, path, &dir, text);
        if v.messages.is_empty() {
            Ok(inventory)
        } else {
            Err(InventoryError {
                messages: v.messages,
            })
        }
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.has(role))
    }

    /// The database primary (validation guarantees at most one).
    pub fn db_primary(&self) -> Option<&Host> {
        self.with_role(Role::DbPrimary).next()
    }
}

/// The inventory text with `db-primary` moved from host `from` to host `to` (which had
/// `db-replica`, now given to `from`): only those two role words change, so comments,
/// order and layout stay as the user wrote them.
pub fn swap_db_primary(text: &str, from: &Host, to: &Host) -> Result<String> {
    let (map, _) = SourceMap::build(text);
    let mut edits = Vec::new();
    for (host, old, new) in [
        (from, Role::DbPrimary, Role::DbReplica),
        (to, Role::DbReplica, Role::DbPrimary),
    ] {
        let i = host
            .roles
            .iter()
            .position(|r| *r == old)
            .with_context(|| format!("{} does not have the role {old}", host.name))?;
        let pos = map
            .value(&format!("hosts.{}.roles[{i}]", host.name))
            .with_context(|| format!("finding hosts.{}.roles in the inventory", host.name))?;
        edits.push((pos, old.as_str(), new.as_str()));
    }
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    for (pos, old, new) in edits {
        let line = lines.get_mut(pos.line - 1).context("inventory line")?;
        let start = line
            .char_indices()
            .nth(pos.col - 1)
            .map(|(b, _)| b)
            .context("inventory column")?;
        if !line[start..].starts_with(old) {
            anyhow::bail!(
                "line {} of the inventory does not read {old} where expected",
                pos.line
            );
        }
        line.replace_range(start..start + old.len(), new);
    }
    Ok(lines.join("\n"))
}

/// Formats a serde_yaml error as `file:line:col: path: message`.
fn yaml_error(file: &str, e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    let mut msg = raw_secret::without_internals(&msg);
    // "hosts.web-02: unknown field `adress`, ..." names the field in the path too.
    if let Some((path, rest)) = msg.split_once(": unknown field `") {
        if let Some(field) = rest.split('`').next() {
            msg = format!("{path}.{field}: unknown field `{rest}");
        }
    }
    match e.location() {
        Some(loc) => format!("{file}:{}:{}: {msg}", loc.line(), loc.column()),
        None => format!("{file}: {msg}"),
    }
}

// ---- raw (as written) -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    domain: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    ssh: RawSsh,
    hosts: IndexMap<String, RawHost>,
    #[serde(default)]
    app: AppSettings,
    #[serde(default)]
    nginx: NginxSettings,
    #[serde(default)]
    haproxy: HaproxySettings,
    #[serde(default)]
    mysql: MysqlSettings,
    #[serde(default)]
    tls: Option<TlsSettings>,
    #[serde(default)]
    vip: Option<VipSettings>,
    #[serde(default)]
    firewall: Option<FirewallSettings>,
    #[serde(default)]
    monitoring: Option<MonitoringSettings>,
    #[serde(default)]
    secrets: IndexMap<String, RawSecret>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<String>,
    port: Option<u16>,
    known_hosts: Option<PathBuf>,
    identity_file: Option<PathBuf>,
    config_file: Option<PathBuf>,
    connect_timeout: Option<u64>,
    connector: Option<Connector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    address: String,
    roles: Vec<Role>,
    #[serde(default)]
    ssh: RawSsh,
    server_id: Option<u32>,
}

use raw_secret::RawSecret;

// ---- validation ---------------------------------------------------------------------

struct Validator {
    file: String,
    map: SourceMap,
    messages: Vec<String>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(is_name)
}

fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["ms", "s", "m", "h", "d", ""].contains(&unit)
}

fn is_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.chars().all(|c| c.is_ascii_digit())
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A path on a host that the templates put into configs: absolute, plain characters.
fn is_remote_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c))
}

/// A database or user name that can go into SQL and configs unquoted.
fn is_sql_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Validator {
    /// `FILE:LINE:COL: PATH: MSG`, at the value of `path` (or its nearest parent).
    fn at(&self, path: &str, msg: impl fmt::Display) -> String {
        let pos = self.map.value(path).unwrap_or(Pos { line: 1, col: 1 });
        format!("{}:{}:{}: {path}: {msg}", self.file, pos.line, pos.col)
    }

    fn err(&mut self, path: &str, msg: impl fmt::Display) {
        let message = self.at(path, msg);
        self.messages.push(message);
    }

    fn check(&mut self, ok: bool, path: &str, msg: impl FnOnce() -> String) {
        if !ok {
            self.err(path, msg());
        }
    }

    fn build(&mut self, raw: RawInventory, path: &Path, dir: &Path, text: &str) -> Inventory {
        let rel = |p: &PathBuf| -> PathBuf {
            let expanded = expand_home(p);
            if expanded.is_absolute() {
                expanded
            } else {
                dir.join(expanded)
            }
        };

        self.check(is_domain(&raw.domain), "domain", || {
            format!("invalid domain name {:?}", raw.domain)
        });
        for (i, a) in raw.aliases.iter().enumerate() {
            self.check(is_domain(a), &format!("aliases[{i}]"), || {
                format!("invalid domain name {a:?}")
            });
        }

        // Hosts.
        let mut hosts = Vec::new();
        let mut by_address: HashMap<IpAddr, String> = HashMap::new();
        let mut by_server_id: HashMap<u32, String> = HashMap::new();
        if raw.hosts.is_empty() {
            self.err("hosts", "no hosts defined");
        }
        for (name, h) in &raw.hosts {
            let hp = format!("hosts.{name}");
            self.check(is_name(name), &hp, || {
                format!("invalid host name {name:?} (lowercase letters, digits and '-')")
            });
            let mut address_taken = false;
            let address: IpAddr = match h.address.trim().parse() {
                Ok(a) => a,
                Err(_) => {
                    // Checks that derive from the address are skipped.
                    address_taken = true;
                    self.err(
                        &format!("{hp}.address"),
                        format!("invalid IP address {:?}", h.address),
                    );
                    IpAddr::from([0, 0, 0, 0])
                }
            };
            if address_taken {
                // Already reported.
            } else if let Some(other) = by_address.insert(address, name.clone()) {
                address_taken = true;
                self.err(
                    &format!("{hp}.address"),
                    format!("duplicate address {address} (already used by {other})"),
                );
            }
            if h.roles.is_empty() {
                self.err(&format!("{hp}.roles"), "a host needs at least one role");
            }
            let mut seen = Vec::new();
            for (i, r) in h.roles.iter().enumerate() {
                if seen.contains(r) {
                    self.err(
                        &format!("{hp}.roles[{i}]"),
                        format!("role {r} listed twice"),
                    );
                }
                seen.push(*r);
            }
            if h.roles.contains(&Role::DbPrimary) && h.roles.contains(&Role::DbReplica) {
                self.err(
                    &format!("{hp}.roles"),
                    "a host cannot be both db-primary and db-replica",
                );
            }
            let merged = |d: &RawSsh, o: &RawSsh| SshSettings {
                user: o
                    .user
                    .clone()
                    .or(d.user.clone())
                    .unwrap_or_else(|| "root".into()),
                port: o.port.or(d.port).unwrap_or(22),
                known_hosts: o.known_hosts.as_ref().or(d.known_hosts.as_ref()).map(rel),
                identity_file: o
                    .identity_file
                    .as_ref()
                    .or(d.identity_file.as_ref())
                    .map(rel),
                config_file: o.config_file.as_ref().or(d.config_file.as_ref()).map(rel),
                connect_timeout: o.connect_timeout.or(d.connect_timeout).unwrap_or(10),
                connector: o.connector.or(d.connector).unwrap_or_default(),
            };
            let ssh = merged(&raw.ssh, &h.ssh);
            if ssh.port == 0 {
                let p = if h.ssh.port.is_some() {
                    format!("{hp}.ssh.port")
                } else {
                    "ssh.port".into()
                };
                self.err(&p, "port 0 is not a valid SSH port");
            }
            if !grammar::is_login_name(&ssh.user) {
                self.err(
                    &format!("{hp}.ssh.user"),
                    format!(
                        "invalid SSH user {:?} (letters, digits, '_', '.', '-')",
                        ssh.user
                    ),
                );
            }
            let server_id = h.server_id.unwrap_or_else(|| derived_server_id(address));
            if server_id == 0 && !address_taken {
                self.err(
                    &format!("{hp}.server_id"),
                    "server_id must be between 1 and 4294967295",
                );
            }
            let is_db = h.roles.contains(&Role::DbPrimary) || h.roles.contains(&Role::DbReplica);
            if is_db && !address_taken {
                if let Some(other) = by_server_id.insert(server_id, name.clone()) {
                    self.err(
                        &format!("{hp}.server_id"),
                        format!("server_id {server_id} is also the server_id of {other}"),
                    );
                }
            }
            hosts.push(Host {
                name: name.clone(),
                address,
                roles: h.roles.clone(),
                ssh,
                server_id,
            });
        }

        // Roles across the stack.
        let count = |r: Role| hosts.iter().filter(|h| h.roles.contains(&r)).count();
        if !hosts.is_empty() {
            if count(Role::Lb) == 0 {
                self.err(
                    "hosts",
                    "no host has the role lb (at least one load balancer is required)",
                );
            }
            if count(Role::Web) == 0 {
                self.err(
                    "hosts",
                    "no host has the role web (at least one web server is required)",
                );
            }
            let primaries: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::DbPrimary)).collect();
            let replicas: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::DbReplica)).collect();
            if primaries.len() > 1 {
                let names: Vec<&str> = primaries.iter().map(|h| h.name.as_str()).collect();
                self.err(
                    &format!("hosts.{}.roles", primaries[1].name),
                    format!(
                        "more than one db-primary ({}): exactly one host must have it",
                        names.join(", ")
                    ),
                );
            } else if primaries.is_empty() && !replicas.is_empty() {
                self.err(
                    &format!("hosts.{}.roles", replicas[0].name),
                    "db-replica without a db-primary: no host has the role db-primary",
                );
            } else if primaries.is_empty() {
                self.err(
                    "hosts",
                    "no host has the role db-primary (exactly one is required)",
                );
            }
        }

        // Settings.
        let mut app = raw.app.clone();
        if let Some(src) = &app.source {
            let resolved = rel(src);
            if !resolved.is_dir() {
                self.err(
                    "app.source",
                    format!("no such directory: {}", resolved.display()),
                );
            }
            app.source = Some(resolved);
        }
        self.check(is_remote_path(&app.root), "app.root", || {
            format!(
                "app.root must be an absolute path of plain characters, got {:?}",
                app.root
            )
        });
        self.check(is_sql_name(&app.user), "app.user", || {
            format!("invalid user name {:?}", app.user)
        });
        self.check(app.port != 0, "app.port", || "port 0 is not valid".into());
        self.check(app.keep_releases >= 1, "app.keep_releases", || {
            "keep at least 1 release".into()
        });
        let hc = &raw.haproxy.health_check;
        self.check(
            grammar::is_url_path(&hc.path),
            "haproxy.health_check.path",
            || {
                format!(
                    "invalid health check path {:?} (a '/' then letters, digits and \
                     '/', '-', '_', '.', '~'; at most 255)",
                    hc.path
                )
            },
        );
        for (field, value) in [
            ("haproxy.health_check.interval", &hc.interval),
            ("haproxy.timeouts.connect", &raw.haproxy.timeouts.connect),
            ("haproxy.timeouts.client", &raw.haproxy.timeouts.client),
            ("haproxy.timeouts.server", &raw.haproxy.timeouts.server),
        ] {
            self.check(is_duration(value), field, || {
                format!("invalid duration {value:?} (e.g. 500ms, 5s, 1m)")
            });
        }
        for (i, p) in raw.haproxy.passive.iter().enumerate() {
            let ok = hosts.iter().any(|h| &h.name == p && h.has(Role::Web));
            self.check(ok, &format!("haproxy.passive[{i}]"), || {
                format!("{p:?} is not a host with the role web")
            });
        }
        if raw.haproxy.mode == PoolMode::ActivePassive {
            let web = hosts.iter().filter(|h| h.has(Role::Web)).count();
            if raw.haproxy.passive.is_empty() || raw.haproxy.passive.len() >= web {
                self.err(
                    "haproxy.mode",
                    "active-passive needs haproxy.passive to name at least one web server and leave at least one active",
                );
            }
        }
        self.check(
            is_size(&raw.nginx.client_max_body_size),
            "nginx.client_max_body_size",
            || {
                format!(
                    "invalid size {:?} (e.g. 10m)",
                    raw.nginx.client_max_body_size
                )
            },
        );
        self.check(
            is_size(&raw.mysql.innodb_buffer_pool_size),
            "mysql.innodb_buffer_pool_size",
            || {
                format!(
                    "invalid size {:?} (e.g. 256M)",
                    raw.mysql.innodb_buffer_pool_size
                )
            },
        );
        for (field, value) in [
            ("mysql.database", &raw.mysql.database),
            ("mysql.app_user", &raw.mysql.app_user),
            ("mysql.replication_user", &raw.mysql.replication_user),
        ] {
            self.check(is_sql_name(value), field, || {
                format!("invalid name {value:?} (letters, digits and '_', at most 32)")
            });
        }

        // Secrets.
        let mut secrets = BTreeMap::new();
        for (name, s) in &raw.secrets {
            let sp = format!("secrets.{name}");
            self.check(is_sql_name(name), &sp, || {
                format!("invalid secret name {name:?} (letters, digits and '_')")
            });
            match (&s.env, &s.file) {
                (Some(env), None) => {
                    if is_env_name(env) {
                        secrets.insert(name.clone(), SecretSource::Env(env.clone()));
                    } else {
                        self.err(
                            &format!("{sp}.env"),
                            format!("malformed secret reference: {env:?} is not an environment variable name"),
                        );
                    }
                }
                (None, Some(file)) => {
                    if file.as_os_str().is_empty() {
                        self.err(&format!("{sp}.file"), "malformed secret reference: empty file name");
                    } else {
                        secrets.insert(name.clone(), SecretSource::File(rel(file)));
                    }
                }
                _ => self.err(
                    &sp,
                    "malformed secret reference: give exactly one of `env: VARIABLE` or `file: PATH`",
                ),
            }
        }
        if hosts.iter().any(Host::is_db) {
            for needed in DB_SECRETS {
                if !raw.secrets.contains_key(needed) {
                    self.err(
                        "secrets",
                        format!(
                            "secret {needed} is required by the database roles but not defined"
                        ),
                    );
                }
            }
        }

        let tls = raw.tls.map(|mut t| {
            t.cert = rel(&t.cert);
            t
        });
        if let Some(t) = &tls {
            if !t.cert.is_file() {
                self.err("tls.cert", format!("no such file: {}", t.cert.display()));
            }
            if !raw.secrets.contains_key(&t.key) {
                self.err(
                    "tls.key",
                    format!(
                        "the key's secret {:?} is not defined under `secrets:`",
                        t.key
                    ),
                );
            }
        }

        if let Some(v) = &raw.vip {
            if hosts.iter().filter(|h| h.has(Role::Lb)).count() < 2 {
                self.err(
                    "vip",
                    "a floating address needs at least two hosts with the role lb",
                );
            }
            if v.router_id == 0 {
                self.err("vip.router_id", "VRRP router ids are 1 to 255");
            }
            // Linux names: at most 15 bytes (IFNAMSIZ).
            if v.interface.is_empty()
                || v.interface.len() > 15
                || !v
                    .interface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                self.err(
                    "vip.interface",
                    format!("invalid interface name {:?}", v.interface),
                );
            }
        }

        if let Some(f) = &raw.firewall {
            if f.admin.is_empty() {
                self.err(
                    "firewall.admin",
                    "name at least one network allowed to reach SSH (or the tool locks itself out)",
                );
            }
            for (i, c) in f.admin.iter().enumerate() {
                self.check(
                    parse_cidr(c).is_some(),
                    &format!("firewall.admin[{i}]"),
                    || format!("invalid network {c:?} (want ADDRESS/PREFIX, e.g. 192.0.2.0/24)"),
                );
            }
            self.check(
                (5..=3600).contains(&f.rollback_after),
                "firewall.rollback_after",
                || {
                    format!(
                        "rollback_after must be 5 to 3600 seconds, got {}",
                        f.rollback_after
                    )
                },
            );
        }
        let monitored = hosts.iter().any(|h| h.has(Role::Monitor));
        if raw.monitoring.is_some() && !monitored {
            self.err(
                "monitoring",
                "monitoring settings but no host has the role monitor",
            );
        }
        let monitoring = monitored.then(|| raw.monitoring.clone().unwrap_or_default());
        if let Some(m) = &monitoring {
            for (field, value) in [
                ("monitoring.scrape_interval", &m.scrape_interval),
                ("monitoring.alert_for", &m.alert_for),
            ] {
                self.check(is_duration(value) && !value.ends_with("ms"), field, || {
                    format!("invalid duration {value:?} (e.g. 15s, 1m)")
                });
            }
            self.check(is_sql_name(&m.mysql_user), "monitoring.mysql_user", || {
                format!("invalid name {:?}", m.mysql_user)
            });
            if hosts.iter().any(Host::is_db) && !raw.secrets.contains_key(MONITOR_SECRET) {
                self.err(
                    "secrets",
                    format!("secret {MONITOR_SECRET} is required by the monitor role (the MySQL exporter's account) but not defined"),
                );
            }
        }

        let ssh = SshSettings {
            user: raw.ssh.user.clone().unwrap_or_else(|| "root".into()),
            port: raw.ssh.port.unwrap_or(22),
            known_hosts: raw.ssh.known_hosts.as_ref().map(rel),
            identity_file: raw.ssh.identity_file.as_ref().map(rel),
            config_file: raw.ssh.config_file.as_ref().map(rel),
            connect_timeout: raw.ssh.connect_timeout.unwrap_or(10),
            connector: raw.ssh.connector.unwrap_or_default(),
        };
        // MySQL 8 is not in Debian's archive, and seeding, backup and restore call
        // MariaDB's tools: its templates are snapshot-tested, never run.
        let untested = match raw.mysql.flavor {
            Flavor::Mariadb => Vec::new(),
            Flavor::Mysql8 => vec![self.at(
                "mysql.flavor",
                "mysql8 is refused by check, diff, plan and apply: MySQL 8 is not in \
                 Debian's archive, so no lab can test it end to end (seeding, backup and \
                 restore call MariaDB's tools); use `flavor: mariadb` (render still writes \
                 the mysql8 files)",
            )],
        };
        Inventory {
            untested,
            ssh,
            path: path.to_path_buf(),
            source_hash: hex::encode(Sha256::digest(text.as_bytes())),
            domain: raw.domain,
            aliases: raw.aliases,
            hosts,
            app,
            nginx: raw.nginx,
            haproxy: raw.haproxy,
            mysql: raw.mysql,
            tls,
            vip: raw.vip,
            firewall: raw.firewall,
            monitoring,
            secrets,
        }
    }
}

/// A stable, unique server-id: the IPv4 address as a number (the low 32 bits for IPv6),
/// so adding a host never renumbers the others.
fn derived_server_id(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => (u128::from(a) & 0xffff_ffff) as u32,
    }
}

fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}
