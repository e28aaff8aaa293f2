//! The inventory: the one YAML file that describes the stack. Owns loading, the typed
//! model and every validation rule, with errors that name file, line, column and field.
//! serde_yaml is used here and nowhere else.

mod grammar;
mod hosts;
pub mod limits;
mod raw_secret;
pub mod rollout;
mod settings;
mod source_map;
mod validation;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use settings::{
    AppSettings, FirewallSettings, HaproxySettings, HealthCheck, MonitoringSettings, MysqlSettings,
    NginxSettings, Timeouts, TlsSettings, VipSettings,
};
pub use source_map::Pos;
use source_map::SourceMap;
use validation::{RawInventory, Validator};

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
    /// How releases reach the web servers (`rollout:`; none: no canary stage).
    pub rollout: Option<rollout::Rollout>,
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
        let e = anyhow::anyhow!("{}", self.untested.join("\n"));
        Err(crate::error::tag(
            e,
            crate::error::ErrorKind::Inventory,
            None,
        ))
    }

    /// Reads, parses and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        use crate::error::{ErrorKind, Kind};
        let text = limits::read(path).kind(ErrorKind::Inventory, None)?;
        Inventory::parse(path, &text)
            .map_err(anyhow::Error::from)
            .kind(ErrorKind::Inventory, None)
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
