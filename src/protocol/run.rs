//! The operations of an apply (src/agent/foobar_agent/: observe.py, stage.py,
//! commit.py, firewall.py): observe, stage, commit, abort and rollback of a run, the
//! firewall's anti-lockout guard, and the pieces their requests share (a service action
//! and its check, a validator, the lock owner, the history record).

use std::collections::BTreeMap;

use serde_json::Value;

use super::database::DbSpec;
use super::shape::{names, tagged, Shape};
use super::Operation;
use crate::boot::BootAction;
use crate::diff::FileChangeKind;
use crate::plan::{Service, ServiceAction};
use crate::remote::agent::{HostState, ManifestEntry};

wire! {
    /// `observe`: reads the host's state, never writes. Answer: [`HostState`].
    #[derive(Default)]
    pub struct Observe {
        /// The files the tool wants: path -> sha256 of the wanted content. Each is
        /// reported (with its content, base64, when it differs, up to `max_content`
        /// bytes); the files of the host's manifest are reported too.
        pub paths: BTreeMap<String, String>,
        /// Services (unit names) whose running state, pid and start at boot to report.
        pub services: Vec<String>,
        /// Debian packages whose installed state to report.
        pub packages: Vec<String>,
        /// The most bytes of a differing file's content to send back.
        pub max_content: u64,
        /// The host's database part: what to read of the server (never written here).
        pub db: Option<DbSpec>,
        /// The application's release root: which releases are there, which is current.
        pub release: Option<ReleaseRoot>,
        /// System users whose existence to report.
        pub users: Vec<String>,
        /// A load balancer: report every backend server as HAProxy sees it.
        pub haproxy: bool,
        /// Certificate files (PEM) whose expiry to report.
        pub certs: Vec<String>,
        /// The ports the host's services need: who listens on each.
        pub ports: Vec<PortWanted>,
    }
}

impl Operation for Observe {
    const OP: &'static str = "observe";
    type Answer = HostState;
}

wire! {
    /// A release root (`observe`'s `release`).
    pub struct ReleaseRoot {
        /// The directory holding `releases/ID` and the `current` symlink.
        pub root: String,
    }
}

wire! {
    /// A port a host's service needs (src/run/preflight.rs).
    pub struct PortWanted {
        pub port: u16,
        /// The unit that should hold it (its pid is looked at first).
        pub service: String,
        /// Process names whose descriptors to read first.
        pub names: Vec<String>,
    }
}

wire! {
    /// `stage`: takes the host's lock for the run (waiting up to `lock_wait_s` for a
    /// live one, never taking it over), checks that every file is still as observed,
    /// installs packages and users, writes each new file beside its target
    /// (`PATH.foobar-new-RUN`) and runs the validators on the staged files. On any
    /// failure the staged files go and the lock is freed.
    pub struct Stage {
        /// The run's id (1-64 of `[A-Za-z0-9_-]`): names its staged files and records.
        pub run_id: String,
        /// Who takes the lock (lock.json; the flock is the agent's).
        pub lock: LockOwner,
        /// Seconds to wait for another run's live lock.
        pub lock_wait_s: u64,
        /// path -> the sha256 seen by observe (None: no file); a file changed since is
        /// a `conflict`.
        pub expect: BTreeMap<String, Option<String>>,
        /// Packages to install when missing (apt-get).
        pub install: Vec<String>,
        /// System users to create when missing.
        pub users: Vec<String>,
        /// The files to write.
        pub files: Vec<StagedFile>,
        /// The files this run removes (removed at commit).
        pub deletes: Vec<String>,
        /// The validators to run on the staged tree.
        pub validate: Vec<Validator>,
        /// The run's history record (written with a failure here, or at commit).
        pub history: HistoryRecord,
    }
}

impl Operation for Stage {
    const OP: &'static str = "stage";
    type Answer = Staged;
}

wire! {
    /// Who holds a host's lock.
    #[derive(PartialEq)]
    pub struct LockOwner {
        /// `user@machine` of the tool.
        pub owner: String,
        /// The tool's process id.
        pub pid: u32,
        /// Unix seconds the run started.
        pub started: f64,
        pub tool_version: String,
        pub run_id: String,
    }
}

wire! {
    /// One file to stage.
    pub struct StagedFile {
        pub path: String,
        /// Its whole content, base64.
        pub content_b64: String,
        /// Octal, e.g. `0644`.
        pub mode: String,
        pub owner: String,
        pub group: String,
        /// The service the file belongs to.
        pub service: Service,
    }
}

/// A validator the agent runs on staged files (src/agent/foobar_agent/validate.py, `validate_one`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Validator {
    /// `nginx -t` on a copy of the nginx tree with the staged files in it.
    Nginx(NginxTree),
    /// `haproxy -c -f`.
    Haproxy(ConfigFile),
    /// `keepalived -t -f`.
    Keepalived(ConfigFile),
    /// `mariadbd --defaults-file=F --help --verbose`.
    Mariadb(ConfigFile),
    /// `mysqld --validate-config`.
    Mysql8(ConfigFile),
    /// `nft -c -f`.
    Nft(ConfigFile),
    /// `promtool check config`.
    Prometheus(ConfigFile),
    /// `prometheus-blackbox-exporter --config.check`.
    Blackbox(ConfigFile),
}

impl Validator {
    /// The validator of kind `kind` (the service table's) on one file; None for
    /// `nginx`, which checks a tree ([`NginxTree`]), and for an unknown kind.
    pub fn of_file(kind: &str, file: ConfigFile) -> Option<Validator> {
        Some(match kind {
            "haproxy" => Validator::Haproxy(file),
            "keepalived" => Validator::Keepalived(file),
            "mariadb" => Validator::Mariadb(file),
            "mysql8" => Validator::Mysql8(file),
            "nft" => Validator::Nft(file),
            "prometheus" => Validator::Prometheus(file),
            "blackbox" => Validator::Blackbox(file),
            _ => return None,
        })
    }
}

impl Shape for Validator {
    fn shape() -> Value {
        let file = ConfigFile::shape();
        let mut v = vec![("nginx", NginxTree::shape())];
        for k in [
            "haproxy",
            "keepalived",
            "mariadb",
            "mysql8",
            "nft",
            "prometheus",
            "blackbox",
        ] {
            v.push((k, file.clone()));
        }
        tagged("kind", &v)
    }
}

wire! {
    /// The nginx tree a validator checks.
    #[derive(PartialEq)]
    pub struct NginxTree {
        /// nginx's prefix (`/etc/nginx`): every file is under it.
        pub root: String,
        /// The main config.
        pub conf: String,
        /// The files of the tree this run stages.
        pub files: Vec<String>,
    }
}

wire! {
    /// The one config file a validator checks.
    #[derive(PartialEq)]
    pub struct ConfigFile {
        pub path: String,
    }
}

impl ConfigFile {
    /// The planned file a validator checks.
    pub fn of(f: &crate::plan::ManagedFile) -> ConfigFile {
        ConfigFile {
            path: f.path.clone(),
        }
    }
}

wire! {
    /// A run's record in the host's history (history.jsonl), as the tool writes it.
    #[derive(PartialEq)]
    pub struct HistoryRecord {
        /// ISO 8601 UTC.
        pub time: String,
        pub user: String,
        pub tool_version: String,
        pub run_id: String,
        /// The inventory's name for the host (the agent adds `hostname`, what the host
        /// calls itself).
        pub host: String,
        /// The inventory's path and the hash of its text.
        pub inventory: String,
        pub inventory_hash: String,
        /// The commit of the git repository holding the inventory.
        pub git_commit: Option<String>,
        pub files: Vec<HistoryFile>,
        pub services: Vec<HistoryService>,
        /// Host name -> address of every inventory host (`--prune-host` reads them).
        pub hosts: BTreeMap<String, String>,
        pub boot: Vec<HistoryBoot>,
        /// Set by the tool for a rollback it asks for (`rolled-back`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub result: Option<String>,
    }
}

wire! {
    #[derive(PartialEq)]
    pub struct HistoryFile {
        pub path: String,
        pub change: FileChangeKind,
    }
}

wire! {
    #[derive(PartialEq)]
    pub struct HistoryService {
        pub service: Service,
        pub action: ServiceAction,
    }
}

wire! {
    #[derive(PartialEq)]
    pub struct HistoryBoot {
        pub service: Service,
        pub action: BootAction,
    }
}

answer! {
    /// `stage`'s answer.
    pub struct Staged {
        /// Each staged file and where it waits.
        pub staged: Vec<StagedPath>,
        /// Packages apt-get installed.
        pub installed: Vec<String>,
        /// The validators that passed.
        pub validated: Vec<Validated>,
        /// The lock of a dead run this stage took (its agent was gone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub replaced_stale_lock: Option<StaleLock>,
    }
}

answer! {
    pub struct StagedPath {
        pub path: String,
        pub staged: String,
    }
}

answer! {
    pub struct Validated {
        pub kind: String,
        pub path: String,
    }
}

answer! {
    /// What lock.json said of a dead run.
    pub struct StaleLock {
        pub run_id: Option<String>,
        pub owner: Option<String>,
        pub pid: Option<u64>,
        pub started: Option<f64>,
        pub tool_version: Option<String>,
        pub host: Option<String>,
        pub agent_pid: Option<u64>,
    }
}

wire! {
    /// `commit`: backs up every target, stops the services leaving the host, swaps
    /// the staged files in (and removes `deletes`), runs the actions in order, each
    /// proven by its check, and changes starts at boot; at the first failure (or when
    /// the tool's connection is gone) it restores everything. Frees the lock.
    pub struct Commit {
        pub run_id: String,
        /// The staged files to swap in.
        pub files: Vec<String>,
        /// The files to remove.
        pub deletes: Vec<String>,
        /// Service actions, in order.
        pub actions: Vec<Action>,
        /// The manifest the host keeps after this run.
        pub manifest: Vec<ManifestEntry>,
        pub history: HistoryRecord,
        /// Services to enable or disable at boot.
        pub boot: Vec<BootEntry>,
    }
}

impl Operation for Commit {
    const OP: &'static str = "commit";
    type Answer = Committed;
}

/// The manifest entry's fields (src/remote/agent.rs), as the commit sends them.
impl Shape for ManifestEntry {
    fn shape() -> Value {
        serde_json::json!({
            "path": "str", "sha256": ["opt", "str"], "mode": "str", "owner": "str",
            "group": "str", "service": "str",
        })
    }
}

wire! {
    /// A service action of a commit or rollback.
    #[derive(PartialEq)]
    pub struct Action {
        /// The unit name.
        pub service: String,
        pub action: ServiceAction,
        /// How the agent proves the action took (none after a stop).
        pub check: Option<ServiceCheck>,
        /// The anti-lockout guard armed before a new firewall loads.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub guard: Option<FirewallGuardSpec>,
    }
}

wire! {
    /// The proof an action took (src/services.rs, src/agent/foobar_agent/live.py). One of `live`
    /// (with `config` or `tcp`), `tcp`, `command` or `running`.
    #[derive(PartialEq, Default)]
    pub struct ServiceCheck {
        /// The live check of a service whose config the tool owns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub live: Option<LiveKind>,
        /// The config the live check reads the expected state from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub config: Option<String>,
        /// `HOST:PORT` that must accept a connection (a list for a live check).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tcp: Option<Tcp>,
        /// A command that must exit 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub command: Option<Vec<String>>,
        /// The service's process must run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub running: Option<bool>,
        /// Seconds the check may take.
        pub timeout_s: u64,
    }
}

/// A live check's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveKind {
    Haproxy,
    Nginx,
    Mariadb,
}

impl LiveKind {
    /// The kind named `name` (src/services.rs's table names them).
    pub fn of(name: &str) -> Option<LiveKind> {
        serde_json::from_value(serde_json::json!(name)).ok()
    }
}

impl Shape for LiveKind {
    fn shape() -> Value {
        names(&["haproxy", "nginx", "mariadb"])
    }
}

/// One `HOST:PORT`, or several.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Tcp {
    One(String),
    Many(Vec<String>),
}

impl Shape for Tcp {
    fn shape() -> Value {
        serde_json::json!(["either", "str", ["list", "str"]])
    }
}

wire! {
    /// The anti-lockout guard: unless a fresh connection confirms within `seconds`,
    /// the host puts its previous ruleset back.
    #[derive(PartialEq)]
    pub struct FirewallGuardSpec {
        pub path: String,
        pub seconds: u64,
    }
}

wire! {
    /// A change of a service's start at boot.
    #[derive(PartialEq)]
    pub struct BootEntry {
        pub service: String,
        pub enable: bool,
    }
}

answer! {
    /// `commit`'s answer.
    pub struct Committed {
        pub actions: Vec<ActionDone>,
        /// The boot changes made.
        pub boot: Vec<BootEntry>,
    }
}

answer! {
    /// An action the agent ran.
    pub struct ActionDone {
        pub service: String,
        /// What it ran (a reload may become a start).
        pub action: String,
        pub seconds: f64,
    }
}

wire! {
    /// `abort`: removes a run's staged files (unless it committed) and frees its lock.
    pub struct Abort {
        pub run_id: String,
    }
}

impl Operation for Abort {
    const OP: &'static str = "abort";
    type Answer = Aborted;
}

answer! {
    pub struct Aborted {
        /// Staged files removed.
        pub removed: Vec<String>,
        /// Whether the run's lock was freed.
        pub released: bool,
        /// Whether the run had committed (then nothing was removed).
        pub committed: bool,
    }
}

wire! {
    /// `rollback`: puts back what a committed run replaced (refused for a file changed
    /// since, unless `force`), runs the actions again, and restores the boot changes.
    pub struct Rollback {
        pub run_id: String,
        pub actions: Vec<Action>,
        pub history: HistoryRecord,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub force: Option<bool>,
        /// Who takes the lock for the rollback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub lock: Option<LockOwner>,
    }
}

impl Operation for Rollback {
    const OP: &'static str = "rollback";
    type Answer = RolledBack;
}

answer! {
    pub struct RolledBack {
        /// The files put back.
        pub restored: Vec<String>,
        pub actions: Vec<ActionDone>,
        /// The run was already undone (`restored`, `aborted`, `rolled-back`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub already: Option<String>,
    }
}

wire! {
    /// `firewall-confirm`, over a fresh SSH connection: it logged in, so the guard of
    /// the run's new firewall is cancelled.
    pub struct FirewallConfirm {
        pub run_id: String,
    }
}

impl Operation for FirewallConfirm {
    const OP: &'static str = "firewall-confirm";
    type Answer = GuardState;
}

wire! {
    /// `firewall-guard`: the guard's state for the run.
    pub struct FirewallGuard {
        pub run_id: String,
    }
}

impl Operation for FirewallGuard {
    const OP: &'static str = "firewall-guard";
    type Answer = GuardState;
}

answer! {
    /// The anti-lockout guard's state (`firewall-confirm`, `firewall-guard`).
    pub struct GuardState {
        /// A fresh connection cancelled it (firewall-confirm only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub confirmed: Option<bool>,
        /// Armed and not yet fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pending: Option<bool>,
        /// It fired: the previous ruleset was put back.
        pub fired: bool,
        /// nft's exit code when it fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub nft_exit: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub file_error: Option<String>,
        /// Seconds after which it fired.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after_s: Option<f64>,
    }
}
