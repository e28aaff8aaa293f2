//! The agent protocol from the tool's side: how the agent (the Python package
//! src/agent/foobar_agent/) is started on a host (one exec request, its modules and the
//! request(s) on stdin, so argv holds no data), how requests are framed for an agent
//! that serves a whole run, and the typed answers it gives.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Check, Checked, ExecOutput, Remote};
pub use crate::protocol::haproxy::{HaproxyRow, HaproxyView};

/// The agent's modules, embedded in the binary: (module name, source) of each file of
/// the `foobar_agent` package (src/agent/foobar_agent/; a test checks that every file
/// there is listed). Sent in this order.
pub const MODULES: &[(&str, &str)] = &[
    (
        "__init__",
        include_str!("../agent/foobar_agent/__init__.py"),
    ),
    ("paths", include_str!("../agent/foobar_agent/paths.py")),
    ("core", include_str!("../agent/foobar_agent/core.py")),
    ("proc", include_str!("../agent/foobar_agent/proc.py")),
    ("files", include_str!("../agent/foobar_agent/files.py")),
    ("state", include_str!("../agent/foobar_agent/state.py")),
    ("session", include_str!("../agent/foobar_agent/session.py")),
    ("lock", include_str!("../agent/foobar_agent/lock.py")),
    ("boot", include_str!("../agent/foobar_agent/boot.py")),
    ("haproxy", include_str!("../agent/foobar_agent/haproxy.py")),
    (
        "counters",
        include_str!("../agent/foobar_agent/counters.py"),
    ),
    (
        "services",
        include_str!("../agent/foobar_agent/services.py"),
    ),
    ("db", include_str!("../agent/foobar_agent/db.py")),
    (
        "db_restore",
        include_str!("../agent/foobar_agent/db_restore.py"),
    ),
    ("live", include_str!("../agent/foobar_agent/live.py")),
    (
        "packages",
        include_str!("../agent/foobar_agent/packages.py"),
    ),
    ("release", include_str!("../agent/foobar_agent/release.py")),
    ("ports", include_str!("../agent/foobar_agent/ports.py")),
    ("observe", include_str!("../agent/foobar_agent/observe.py")),
    (
        "validate",
        include_str!("../agent/foobar_agent/validate.py"),
    ),
    ("stage", include_str!("../agent/foobar_agent/stage.py")),
    (
        "firewall",
        include_str!("../agent/foobar_agent/firewall.py"),
    ),
    ("actions", include_str!("../agent/foobar_agent/actions.py")),
    ("commit", include_str!("../agent/foobar_agent/commit.py")),
    ("shapes", include_str!("../agent/foobar_agent/shapes.py")),
    ("check", include_str!("../agent/foobar_agent/check.py")),
    ("ops", include_str!("../agent/foobar_agent/ops.py")),
    ("daemon", include_str!("../agent/foobar_agent/daemon.py")),
    ("main", include_str!("../agent/foobar_agent/main.py")),
];

/// What the tool sends as the agent (the bootstrap reads it from stdin, LENGTH bytes):
/// one header line `NAME:SIZE NAME:SIZE ...`, then the modules' sources in that order.
pub fn bundle() -> &'static [u8] {
    static BUNDLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BUNDLE.get_or_init(|| {
        let header: Vec<String> = MODULES
            .iter()
            .map(|(name, source)| format!("{name}:{}", source.len()))
            .collect();
        let mut bundle = format!("{}\n", header.join(" ")).into_bytes();
        for (_, source) in MODULES {
            bundle.extend_from_slice(source.as_bytes());
        }
        bundle
    })
}

/// The fixed loader at the start of the bootstrap (`python3 -I -S -c BOOTSTRAP ID
/// LENGTH [mode]`): reads the agent's modules ([`bundle`], LENGTH bytes) from stdin and
/// imports them as the package `foobar_agent_ID` (as `a`) through a finder on
/// `sys.meta_path`, each module when a request first needs it. Their source is the
/// bytes just sent (a file on the host never runs as the agent); their compiled code
/// is kept as one file, `/var/lib/foobar-infra/agent/foobar_agent_ID/code.TAG.bin`
/// (root-only directories, 0600; TAG is Python's, e.g. cpython-311), written the first
/// time a version runs with every module compiled and read whole on every later start:
/// one file read instead of one per module (on the lab's overlay filesystem each read
/// costs ~0.5 ms). A file that is not every module's code (damaged, another version's)
/// is written again. Where the cache is not safe (read-only disk, a directory others
/// can write) nothing is read from or written to it: the modules compile from memory.
/// The modules import each other relatively, so the package's name does not matter.
pub const LOADER: &str = "import sys,os,marshal,importlib.machinery as u
h,n=sys.argv[1],int(sys.argv[2]);s=sys.stdin.buffer.read(n)
i=s.index(b'\\n');o=i+1;m={}
for e in s[:i].decode().split():
 k,l=e.split(':');l=int(l);m[k]=s[o:o+l];o+=l
d='/var/lib/foobar-infra/agent';p='foobar_agent_'+h;g=d+'/'+p;y={}
def c(k):return compile(m[k],'%s/%s.py'%(g,k),'exec',dont_inherit=True)
try:
 for q in(os.path.dirname(d),d,g):
  try:os.mkdir(q,0o700)
  except FileExistsError:pass
 for q in(d,g):
  t=(os.stat if q==d else os.lstat)(q)
  if t.st_uid!=os.geteuid()or t.st_mode&0o077:raise OSError('unsafe '+q)
 b='%s/code.%s.bin'%(g,sys.implementation.cache_tag)
 try:
  with open(b,'rb')as x:y=marshal.loads(x.read())
 except(OSError,ValueError,EOFError,TypeError):pass
 if not(isinstance(y,dict)and y.keys()==m.keys()and all(type(v)is type(c.__code__)for v in y.values())):
  y={k:c(k)for k in m};t='%s.%d'%(b,os.getpid())
  with open(os.open(t,os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o600),'wb')as x:x.write(marshal.dumps(y))
  os.rename(t,b)
except OSError:y={}
class F:
 def find_spec(self,q,w=None,t=None):
  k='__init__'if q==p else q[len(p)+1:]if q.startswith(p+'.')else None
  if k in m:z=u.ModuleSpec(q,self,origin='%s/%s.py'%(g,k),is_package=k=='__init__');z.has_location=True;return z
 def create_module(self,z):pass
 def exec_module(self,o):
  k=o.__name__[len(p)+1:]or'__init__';exec(y.get(k)or c(k),o.__dict__)
 def get_source(self,q):return m['__init__'if q==p else q[len(p)+1:]].decode()
sys.meta_path.insert(0,F());a=__import__(p)
";

/// The bootstrap in argv: [`LOADER`], then the agent's entry point with the mode.
fn bootstrap() -> &'static str {
    static BOOTSTRAP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOTSTRAP.get_or_init(|| format!("{LOADER}a.entry(sys.argv[3:])"))
}

/// The agent's version id: the first 16 hex digits of the sha256 of everything sent as
/// the agent (names its cached copy).
pub fn agent_id() -> &'static str {
    use sha2::{Digest, Sha256};
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| hex::encode(&Sha256::digest(bundle())[..8]))
}

/// The agent's argv. `mode`: none, one request to end of input; `["serve"]`, framed
/// requests until stdin closes; `["listen", ID, SECONDS]`, start the kept agent (daemon.py).
pub fn argv(mode: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["python3", "-I", "-S", "-c", bootstrap(), agent_id()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(bundle().len().to_string());
    v.extend(mode.iter().map(|m| m.to_string()));
    v
}

/// stdin of a one-request agent: the modules, then the request.
pub fn one_shot_stdin(request: &[u8]) -> Vec<u8> {
    let mut stdin = Vec::with_capacity(bundle().len() + request.len());
    stdin.extend_from_slice(bundle());
    stdin.extend_from_slice(request);
    stdin
}

/// One framed request of a serving agent: `LENGTH\n` and the bytes.
pub fn framed(request: &[u8]) -> Vec<u8> {
    let mut v = format!("{}\n", request.len()).into_bytes();
    v.extend_from_slice(request);
    v
}

/// An error the agent reported (kind and message, plus the validator's output).
#[derive(Debug, Clone, Deserialize, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    /// The host that answered (set by the tool, not the agent).
    #[serde(default, skip_serializing)]
    pub host: Option<String>,
}

impl AgentError {
    /// One message for the user: what failed, and the tool's own words.
    pub fn describe(&self) -> String {
        let mut s = self.message.clone();
        if let Some(out) = &self.output {
            let out = out.trim();
            if !out.is_empty() && !s.contains(out) {
                s.push_str(":\n");
                s.push_str(
                    &out.lines()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
        }
        s
    }
}

/// Runs one agent operation on a host and returns its answer (`ok: true`), or the
/// agent's error as an [`AgentError`] inside the anyhow chain.
pub async fn call(remote: &dyn Remote, op: &str, request: Value) -> Result<Value> {
    call_with(remote, op, request, false).await
}

/// [`call`] over a new connection of its own ([`Remote::exec_fresh`]).
pub async fn call_fresh(remote: &dyn Remote, op: &str, request: Value) -> Result<Value> {
    call_with(remote, op, request, true).await
}

/// A request as sent: with the service table (src/services.rs), from which the agent
/// takes everything it knows about a service.
fn encode(mut request: Value) -> Result<Vec<u8>> {
    if let Some(fields) = request.as_object_mut() {
        fields.insert(
            "service_table".into(),
            crate::services::agent_table().clone(),
        );
    }
    serde_json::to_vec(&request).context("encoding the agent request")
}

async fn call_with(remote: &dyn Remote, op: &str, request: Value, fresh: bool) -> Result<Value> {
    let request = encode(request)?;
    let out = if fresh {
        let argv = argv(&[]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        remote
            .exec_fresh(&argv, one_shot_stdin(&request), op)
            .await?
    } else {
        remote.agent(request, op).await?
    };
    answer(remote.name(), op, out)
}

/// What [`call_checked`] got: the check's own line, or the agent's answer.
pub enum CheckedAnswer {
    Passed(Vec<u8>),
    Answer(Value),
}

/// [`call`] behind a check ([`Remote::agent_checked`]).
pub async fn call_checked(
    remote: &dyn Remote,
    op: &str,
    request: Value,
    check: &Check,
) -> Result<CheckedAnswer> {
    let request = encode(request)?;
    Ok(match remote.agent_checked(check, request, op).await? {
        Checked::Passed(line) => CheckedAnswer::Passed(line),
        Checked::Agent(out) => CheckedAnswer::Answer(answer(remote.name(), op, out)?),
    })
}

/// The agent's answer in a command's output: the JSON value when it says ok, else the
/// agent's error (or what the command printed, when it is not an answer).
fn answer(host: &str, op: &str, out: ExecOutput) -> Result<Value> {
    let answer: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(_) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.stdout.is_empty() && out.status.is_none() {
                let undo = if op == "commit" {
                    ": the agent there undoes this commit as soon as it runs again, so it did not commit"
                } else {
                    ""
                };
                return Err(crate::error::tag(
                    anyhow!(
                        "{host}: the connection was lost during {op} (no answer to SSH keepalives for {} s, or the agent died){undo}: {}",
                        super::ssh::LOST_AFTER_S,
                        stderr.trim()
                    ),
                    crate::error::ErrorKind::Connect,
                    Some(host),
                ));
            }
            let hint = if stderr.contains("sudo") && stderr.contains("password") {
                " (the SSH user needs passwordless sudo: sudo -n failed)"
            } else if stderr.contains("python3") && stderr.contains("not found") {
                " (python3 is required on managed hosts)"
            } else {
                ""
            };
            bail!(
                "{host}: agent {op} failed (exit {:?}){hint}: {}",
                out.status,
                stderr.trim()
            );
        }
    };
    if answer.get("ok") == Some(&Value::Bool(true)) {
        return Ok(answer);
    }
    let mut err: AgentError = serde_json::from_value(
        answer.get("error").cloned().unwrap_or_default(),
    )
    .unwrap_or_else(|_| AgentError {
        kind: "unknown".into(),
        message: answer.to_string(),
        path: None,
        service: None,
        output: None,
        host: None,
    });
    err.host = Some(host.to_string());
    Err(anyhow!(err))
}

/// What `observe` reports of one file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct FileState {
    pub exists: bool,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub link: Option<String>,
    /// Present when the content differs from the desired hash.
    #[serde(default, skip_serializing)]
    pub content_b64: Option<String>,
}

impl FileState {
    pub fn content(&self) -> Option<String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.content_b64.as_ref()?)
            .ok()?;
        Some(String::from_utf8_lossy(&b).into_owned())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ServiceState {
    pub running: bool,
    #[serde(default)]
    pub pid: Option<u64>,
    /// Starts at boot (src/boot.rs); None when the host did not say.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// One entry of the host's managed-file manifest.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub service: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DbUserState {
    pub user: String,
    pub host: String,
    pub exists: bool,
    pub password_ok: bool,
    pub grants_ok: bool,
}

/// SHOW SLAVE STATUS, the parts the tool reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReplicaState {
    #[serde(default)]
    pub master_host: Option<String>,
    #[serde(default)]
    pub master_port: Option<u16>,
    #[serde(default)]
    pub io_running: Option<String>,
    #[serde(default)]
    pub sql_running: Option<String>,
    #[serde(default)]
    pub seconds_behind: Option<i64>,
    #[serde(default)]
    pub last_io_error: String,
    #[serde(default)]
    pub last_sql_error: String,
    #[serde(default)]
    pub gtid_io_pos: Option<String>,
    #[serde(default)]
    pub master_user: Option<String>,
    /// `Current_Pos`, `Slave_Pos` or `No`.
    #[serde(default)]
    pub using_gtid: Option<String>,
    /// The error number each thread last stopped with (0: none), which tells a
    /// transient stop from a diverged replica (src/database/replica.rs).
    #[serde(default)]
    pub last_io_errno: u32,
    #[serde(default)]
    pub last_sql_errno: u32,
}

impl ReplicaState {
    pub fn running(&self) -> bool {
        self.io_running.as_deref() == Some("Yes") && self.sql_running.as_deref() == Some("Yes")
    }

    /// The IO thread is retrying its connection (the primary restarted or is briefly
    /// away) while the SQL thread runs: not stopped, not yet replicating.
    pub fn reconnecting(&self) -> bool {
        self.io_running.as_deref() == Some("Connecting")
            && self.sql_running.as_deref() == Some("Yes")
            && self.last_sql_error.is_empty()
    }
}

/// The database's state as observed (read-only queries).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DbState {
    pub running: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub server_id: Option<u64>,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub gtid_current_pos: Option<String>,
    #[serde(default)]
    pub gtid_binlog_pos: Option<String>,
    #[serde(default)]
    pub database_exists: Option<bool>,
    #[serde(default)]
    pub missing_tables: Vec<String>,
    #[serde(default)]
    pub users: Vec<DbUserState>,
    #[serde(default)]
    pub replica: Option<ReplicaState>,
    /// On a replica: whether it logs in to its primary with the current replication
    /// secret (None: not known).
    #[serde(default)]
    pub replica_password_ok: Option<bool>,
}

/// Everything one `observe` call reports about a host.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HostState {
    pub init: String,
    pub hostname: String,
    pub files: BTreeMap<String, FileState>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
    #[serde(default)]
    pub packages: BTreeMap<String, bool>,
    #[serde(default)]
    pub lock: Option<Value>,
    #[serde(default)]
    pub manifest: Vec<ManifestEntry>,
    #[serde(default)]
    pub last_history: Option<Value>,
    #[serde(default)]
    pub db: Option<DbState>,
    /// A host whose database role left it: its replication, if it still replicates.
    #[serde(default)]
    pub former_replica: Option<ReplicaState>,
    #[serde(default)]
    pub release: Option<ReleaseState>,
    #[serde(default)]
    pub users: BTreeMap<String, bool>,
    /// On load balancers: every backend server and frontend as HAProxy sees it.
    #[serde(default)]
    pub haproxy: Option<HaproxyView>,
    /// Certificates on the host: path -> expiry (Unix seconds), None when unreadable.
    #[serde(default)]
    pub certs: BTreeMap<String, Option<f64>>,
    /// The listening sockets on the ports the host's services need, whoever holds them
    /// (the request's `ports`; src/run/preflight.rs decides what is a conflict).
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Managed paths whose file from before the first apply is kept on the host: a
    /// removal puts it back.
    #[serde(default)]
    pub originals: Vec<String>,
}

/// A listening TCP socket (agent's ports.py: sock_diag, else `/proc/net/tcp{,6}`) and
/// the process holding it, found through `/proc/PID/fd` (None when no process shows it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub address: std::net::IpAddr,
    #[serde(default)]
    pub pid: Option<u32>,
    /// `/proc/PID/comm`.
    #[serde(default)]
    pub process: Option<String>,
    /// The file name of `/proc/PID/exe`.
    #[serde(default)]
    pub exe: Option<String>,
    /// The service it runs under: its systemd unit (from its cgroup), or the init
    /// script of its name on init-script hosts.
    #[serde(default)]
    pub unit: Option<String>,
}

/// The application releases on a web server.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ReleaseState {
    pub current: Option<String>,
    #[serde(default)]
    pub releases: Vec<String>,
}

impl HostState {
    pub fn from_answer(host: &str, v: Value) -> Result<HostState> {
        serde_json::from_value(v).with_context(|| format!("{host}: reading the observe answer"))
    }
}
