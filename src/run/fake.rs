//! A fake [`Remote`] for unit tests of the run (test-only, no Docker): an in-memory
//! fleet of hosts that answers the agent requests a run sends (observe, stage, commit,
//! abort, rollback, the load balancers' backend state, the release and database steps)
//! the way `src/agent` does, keeping each host's live files, staged files and backups,
//! and logging every request. Requests are read as, and answers written from, the
//! protocol's types (src/protocol), so a request the agent would not read fails here
//! too. A failure can be injected at one host and [`Phase`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::diff::sha256_hex;
use crate::inventory::Role;
use crate::plan::{HostPlan, Init, Plan};
use crate::protocol::counters::{Counters, HaproxyCounters};
use crate::protocol::database::Replicating;
use crate::protocol::database::{DbCatchUp, DbPrimary, DbWaitReplica, Done, PrimaryConverged};
use crate::protocol::release::{HaproxyServer, ReleaseSwitch, ReleaseUpload, ServerState};
use crate::protocol::release::{ServerStatus, Switched, Uploaded};
use crate::protocol::run::{Abort, Aborted, Commit, Committed, Observe, Rollback, RolledBack};
use crate::protocol::run::{Stage, Staged as StageAnswer, StagedFile};
use crate::protocol::Operation;
use crate::remote::agent::{DbState, DbUserState, FileState, HostState, ManifestEntry};
use crate::remote::agent::{ReleaseState, ReplicaState, ServiceState};
use crate::remote::{ExecOutput, Input, Remote, Sink};
use crate::secrets::Secrets;

mod counters;

/// Where a run can fail on a host (what the agent would report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `stage` fails before anything is staged (a disk error, a conflict).
    Stage,
    /// `stage` stages the files, then a validator refuses them.
    Validate,
    /// `commit` fails while swapping the files in.
    Commit,
    /// `commit` swapped the files in, then a reload or restart failed.
    Reload,
    /// `commit` reloaded, then the service's check (health) failed.
    Health,
}

/// A file on a fake host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub content: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
}

/// One request a host received: `detail` is the op's argument worth asserting on
/// (e.g. "web-01 drain" for `haproxy-server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub host: String,
    pub op: String,
    pub detail: String,
}

/// Files staged by a run, not yet live.
struct Staged {
    run_id: String,
    files: BTreeMap<String, File>,
    deletes: Vec<String>,
}

/// What a commit replaced, to put back on rollback (None: the file did not exist).
struct Backup {
    run_id: String,
    files: BTreeMap<String, Option<File>>,
    manifest: Vec<ManifestEntry>,
}

#[derive(Default)]
struct Host {
    files: BTreeMap<String, File>,
    manifest: Vec<ManifestEntry>,
    staged: Option<Staged>,
    backup: Option<Backup>,
    /// On a load balancer: each web server of the `web` backend and its state.
    backends: BTreeMap<String, ServerState>,
    db: Option<DbState>,
    release: Option<ReleaseState>,
    users: BTreeMap<String, bool>,
    /// On a load balancer: HAProxy's counters of each web server.
    counters: BTreeMap<String, Counters>,
}

/// The fake hosts, shared by their [`FakeRemote`]s.
#[derive(Default)]
pub struct Fleet {
    hosts: Mutex<BTreeMap<String, Host>>,
    log: Mutex<Vec<Event>>,
    fail: Mutex<Option<(String, Phase)>>,
    /// A web server whose live files hold this text fails 1 request in 5.
    bad_config: Mutex<Option<String>>,
}

/// An agent error: (kind, message).
type Refusal = (&'static str, String);

impl Fleet {
    /// Hosts exactly as `plan` wants them (files, manifest, databases replicating,
    /// releases, web servers UP at every load balancer), as after an earlier apply.
    pub fn in_sync_with(plan: &Plan, secrets: &Secrets) -> Arc<Fleet> {
        let fleet = Fleet::default();
        let mut hosts = fleet.hosts.lock().unwrap();
        for hp in plan.hosts.iter().chain(&plan.outside_balancers) {
            hosts.insert(hp.name().to_string(), host_as_planned(plan, hp, secrets));
        }
        drop(hosts);
        Arc::new(fleet)
    }

    /// One remote per host of the plan, in the plan's order (then the load balancers
    /// outside `--limit`), as the run expects them.
    pub fn remotes(self: &Arc<Fleet>, plan: &Plan) -> Vec<FakeRemote> {
        let hosts = plan.hosts.iter().chain(&plan.outside_balancers);
        hosts
            .map(|hp| FakeRemote {
                name: hp.name().to_string(),
                fleet: self.clone(),
            })
            .collect()
    }

    /// The web servers load balancer `lb` has in its pool (all UP).
    pub fn set_pool(&self, lb: &str, servers: &[&str]) {
        let mut hosts = self.hosts.lock().unwrap();
        let pool = servers.iter().map(|s| (s.to_string(), ServerState::Ready));
        hosts.get_mut(lb).expect("a load balancer").backends = pool.collect();
    }

    /// Makes `phase` fail on `host` (each time it is reached).
    pub fn fail_at(&self, host: &str, phase: Phase) {
        *self.fail.lock().unwrap() = Some((host.to_string(), phase));
    }

    /// Every host's live files.
    pub fn files(&self) -> BTreeMap<String, BTreeMap<String, File>> {
        let hosts = self.hosts.lock().unwrap();
        hosts
            .iter()
            .map(|(n, h)| (n.clone(), h.files.clone()))
            .collect()
    }

    /// The hosts that still hold staged files of some run.
    pub fn staged(&self) -> Vec<String> {
        let hosts = self.hosts.lock().unwrap();
        hosts
            .iter()
            .filter(|(_, h)| h.staged.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every request so far, in the order the hosts received them.
    pub fn log(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    fn fails(&self, host: &str, phase: Phase) -> bool {
        let fail = self.fail.lock().unwrap();
        fail.as_ref().is_some_and(|(h, p)| h == host && *p == phase)
    }

    /// The agent's answer line to one request on `host`.
    fn answer(&self, host: &str, req: &Value) -> Value {
        let op = req["op"].as_str().unwrap_or("").to_string();
        let detail = match op.as_str() {
            "haproxy-server" => format!("{} {}", str_of(req, "server"), str_of(req, "state")),
            "release-switch" => str_of(req, "id").to_string(),
            _ => String::new(),
        };
        self.log.lock().unwrap().push(Event {
            host: host.to_string(),
            op: op.clone(),
            detail,
        });
        let mut hosts = self.hosts.lock().unwrap();
        if op == HaproxyCounters::OP {
            let mut v = serde_json::to_value(self.counters(&mut hosts, host)).expect("JSON");
            v["ok"] = json!(true);
            return v;
        }
        let h = hosts.get_mut(host).expect("a host of the fleet");
        match self.serve(host, h, &op, req) {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err((kind, message)) => {
                json!({"ok": false, "error": {"kind": kind, "message": message}})
            }
        }
    }

    /// Each op, its request read as its protocol type, answered with its answer type.
    fn serve(&self, host: &str, h: &mut Host, op: &str, req: &Value) -> Result<Value, Refusal> {
        match op {
            Observe::OP => typed(req, |r: Observe| Ok(observe(host, h, &r))),
            Stage::OP => typed(req, |r: Stage| self.stage(host, h, r)),
            Commit::OP => typed(req, |r: Commit| self.commit(host, h, r)),
            Abort::OP => typed(req, |r: Abort| Ok(abort(h, &r))),
            Rollback::OP => typed(req, |r: Rollback| rollback(h, &r)),
            HaproxyServer::OP => typed(req, |r: HaproxyServer| Ok(set_backend(h, &r))),
            ReleaseUpload::OP => typed(req, |_: ReleaseUpload| Ok(Uploaded { already: false })),
            ReleaseSwitch::OP => typed(req, |r: ReleaseSwitch| Ok(switch_release(h, r))),
            DbWaitReplica::OP => typed(req, |_: DbWaitReplica| {
                let replica = h.db.as_ref().and_then(|d| d.replica.clone());
                Ok(Replicating { replica })
            }),
            DbCatchUp::OP => typed(req, |_: DbCatchUp| Ok(Done {})),
            DbPrimary::OP => typed(req, |_: DbPrimary| {
                let state = h.db.clone().unwrap_or_default();
                let gtid = "0-1-1".to_string();
                Ok(PrimaryConverged {
                    done: Vec::new(),
                    state,
                    gtid,
                })
            }),
            _ => Err(("request", format!("the fake agent does not know op {op:?}"))),
        }
    }

    fn stage(&self, host: &str, h: &mut Host, r: Stage) -> Result<StageAnswer, Refusal> {
        if self.fails(host, Phase::Stage) {
            return Err(("io", format!("{host}: no space left on device (injected)")));
        }
        for (path, want) in &r.expect {
            let got = h.files.get(path).map(|f| sha256_hex(f.content.as_bytes()));
            if got != *want {
                return Err(("conflict", format!("{path} changed since observed")));
            }
        }
        let files = r.files.iter().map(|f| (f.path.clone(), staged_file(f)));
        let staged = Staged {
            run_id: r.run_id,
            files: files.collect(),
            deletes: r.deletes,
        };
        if self.fails(host, Phase::Validate) {
            // The agent removes what it staged before it answers.
            return Err((
                "validation",
                format!("{host}: config test failed (injected)"),
            ));
        }
        h.staged = Some(staged);
        Ok(StageAnswer {
            staged: Vec::new(),
            installed: Vec::new(),
            validated: Vec::new(),
            replaced_stale_lock: None,
        })
    }

    fn commit(&self, host: &str, h: &mut Host, r: Commit) -> Result<Committed, Refusal> {
        let Some(staged) = h.staged.take().filter(|s| s.run_id == r.run_id) else {
            return Err(("request", format!("run {} has nothing staged", r.run_id)));
        };
        if self.fails(host, Phase::Commit) {
            return Err(("io", format!("{host}: rename failed (injected)")));
        }
        let before = h.files.clone();
        let replaced = r.files.iter().chain(&r.deletes);
        let backup = replaced
            .map(|p| (p.clone(), h.files.get(p).cloned()))
            .collect();
        for p in &r.files {
            h.files.insert(p.clone(), staged.files[p].clone());
        }
        for p in r.deletes.iter().filter(|p| staged.deletes.contains(p)) {
            h.files.remove(p);
        }
        for (phase, what) in [(Phase::Reload, "reload"), (Phase::Health, "check")] {
            if !r.actions.is_empty() && self.fails(host, phase) {
                // The agent restores its own host before it answers.
                h.files = before;
                let msg =
                    format!("{host}: {what} failed (injected); the previous files were restored");
                return Err(("service", msg));
            }
        }
        let manifest = std::mem::replace(&mut h.manifest, r.manifest);
        h.backup = Some(Backup {
            run_id: r.run_id,
            files: backup,
            manifest,
        });
        Ok(Committed {
            actions: Vec::new(),
            boot: Vec::new(),
        })
    }
}

/// Reads `req` as the request type `R`, and `serve`'s answer as JSON.
fn typed<R: Operation>(
    req: &Value,
    serve: impl FnOnce(R) -> Result<R::Answer, Refusal>,
) -> Result<Value, Refusal> {
    let request: R = serde_json::from_value(req.clone())
        .map_err(|e| ("request", format!("a malformed {} request: {e}", R::OP)))?;
    let answer = serve(request)?;
    Ok(serde_json::to_value(answer).expect("an answer is JSON"))
}

/// Drops a run's staged files (not once committed).
fn abort(h: &mut Host, r: &Abort) -> Aborted {
    let staged = h.staged.take_if(|s| s.run_id == r.run_id);
    let removed = staged
        .map(|s| s.files.into_keys().collect())
        .unwrap_or_default();
    let committed = h.backup.as_ref().is_some_and(|b| b.run_id == r.run_id);
    Aborted {
        removed,
        released: true,
        committed,
    }
}

/// Puts back what a run's commit replaced.
fn rollback(h: &mut Host, r: &Rollback) -> Result<RolledBack, Refusal> {
    let Some(backup) = h.backup.take_if(|b| b.run_id == r.run_id) else {
        return Err((
            "request",
            format!("run {} has no committed changes", r.run_id),
        ));
    };
    let restored = backup.files.keys().cloned().collect();
    for (path, old) in backup.files {
        match old {
            Some(f) => h.files.insert(path, f),
            None => h.files.remove(&path),
        };
    }
    h.manifest = backup.manifest;
    Ok(RolledBack {
        restored,
        actions: Vec::new(),
        already: None,
    })
}

/// `haproxy-server` on a load balancer: the server's new state, or absent.
fn set_backend(h: &mut Host, r: &HaproxyServer) -> ServerStatus {
    let Some(state) = h.backends.get_mut(&r.server) else {
        return ServerStatus {
            absent: Some(true),
            status: None,
            sessions: 0,
            old_processes: 0,
        };
    };
    *state = r.state;
    ServerStatus {
        absent: None,
        status: Some(status(*state).into()),
        sessions: 0,
        old_processes: 0,
    }
}

/// HAProxy's name for a server's state.
fn status(state: ServerState) -> &'static str {
    match state {
        ServerState::Ready => "UP",
        ServerState::Drain => "DRAIN",
        ServerState::Maint => "MAINT",
    }
}

fn switch_release(h: &mut Host, r: ReleaseSwitch) -> Switched {
    let release = h.release.get_or_insert_with(ReleaseState::default);
    let previous = release.current.replace(r.id.clone());
    Switched {
        previous,
        current: r.id,
        pruned: Vec::new(),
    }
}

/// What `observe` reports: every requested and manifest file, every service running
/// and enabled, every package installed, and the host's other state.
fn observe(host: &str, h: &Host, r: &Observe) -> HostState {
    let mut st: HostState =
        serde_json::from_value(json!({"init": "systemd", "hostname": host, "files": {}}))
            .expect("a minimal observe answer");
    let manifest = h.manifest.iter().map(|e| &e.path);
    for path in r.paths.keys().chain(manifest) {
        st.files.insert(path.clone(), file_state(h.files.get(path)));
    }
    let running = ServiceState {
        running: true,
        pid: Some(1),
        enabled: Some(true),
    };
    st.services = r
        .services
        .iter()
        .map(|s| (s.clone(), running.clone()))
        .collect();
    st.packages = r.packages.iter().map(|p| (p.clone(), true)).collect();
    st.haproxy = r.haproxy.then(|| {
        let servers = h.backends.iter();
        let rows =
            servers.map(|(w, s)| json!({"backend": "web", "server": w, "status": status(*s)}));
        serde_json::from_value(Value::Array(rows.collect())).expect("HAProxy's rows")
    });
    st.manifest = h.manifest.clone();
    st.last_history = Some(json!({"result": "applied"}));
    st.db = h.db.clone();
    st.release = h.release.clone();
    st.users = h.users.clone();
    st
}

fn file_state(f: Option<&File>) -> FileState {
    let Some(f) = f else {
        return FileState::default();
    };
    FileState {
        exists: true,
        sha256: Some(sha256_hex(f.content.as_bytes())),
        mode: Some(f.mode.clone()),
        owner: Some(f.owner.clone()),
        group: Some(f.group.clone()),
        size: Some(f.content.len() as u64),
        ..FileState::default()
    }
}

/// A host as `hp` wants it.
fn host_as_planned(plan: &Plan, hp: &HostPlan, secrets: &Secrets) -> Host {
    let planned = hp
        .files
        .iter()
        .filter(|f| f.init.is_none_or(|i| i == Init::Systemd));
    let mut host = Host::default();
    for f in planned {
        let content = secrets.resolve(&f.content).expect("the test's secrets");
        host.manifest.push(ManifestEntry {
            path: f.path.clone(),
            sha256: Some(sha256_hex(content.as_bytes())),
            mode: f.mode_string(),
            owner: f.owner.clone(),
            group: f.group.clone(),
            service: f.service.unit().to_string(),
        });
        let file = File {
            content,
            mode: f.mode_string(),
            owner: f.owner.clone(),
            group: f.group.clone(),
        };
        host.files.insert(f.path.clone(), file);
    }
    if hp.host.has(Role::Lb) {
        host.backends = plan
            .backends
            .iter()
            .map(|w| (w.clone(), ServerState::Ready))
            .collect();
    }
    host.db = database_as_planned(hp);
    host.release = hp.release.as_ref().map(|r| ReleaseState {
        current: Some(r.id.clone()),
        releases: vec![r.id.clone()],
    });
    host.users = hp.users.iter().map(|u| (u.clone(), true)).collect();
    host
}

/// The primary with every account as planned, or a replica replicating from it.
fn database_as_planned(hp: &HostPlan) -> Option<DbState> {
    let db = hp.db.as_ref()?;
    let mut st = DbState {
        running: true,
        ..DbState::default()
    };
    match &db.primary {
        None => {
            st.database_exists = Some(true);
            let account = |u: &crate::plan::DbUser| DbUserState {
                user: u.user.clone(),
                host: u.host.clone(),
                exists: true,
                password_ok: true,
                grants_ok: true,
            };
            st.users = db.users.iter().map(account).collect();
        }
        Some(p) => {
            st.read_only = Some(true);
            st.replica_password_ok = Some(true);
            st.replica = Some(ReplicaState {
                master_host: Some(p.address.clone()),
                master_port: Some(p.port),
                master_user: Some(p.user.clone()),
                io_running: Some("Yes".into()),
                sql_running: Some("Yes".into()),
                using_gtid: Some("Current_Pos".into()),
                ..ReplicaState::default()
            });
        }
    }
    Some(st)
}

fn staged_file(f: &StagedFile) -> File {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64.decode(&f.content_b64).expect("base64 content");
    File {
        content: String::from_utf8(bytes).expect("text content"),
        mode: f.mode.clone(),
        owner: f.owner.clone(),
        group: f.group.clone(),
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or("")
}

/// One host of a [`Fleet`].
pub struct FakeRemote {
    name: String,
    fleet: Arc<Fleet>,
}

#[async_trait]
impl Remote for FakeRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn exec_io(
        &self,
        argv: &[&str],
        _stdin: Input<'_>,
        _stdout: Option<Sink<'_>>,
        label: &str,
    ) -> Result<ExecOutput> {
        bail!(
            "{}: the fake runs agent requests only, not {label} ({argv:?})",
            self.name
        )
    }

    async fn agent(&self, request: Vec<u8>, _op: &str) -> Result<ExecOutput> {
        let req: Value = serde_json::from_slice(&request)?;
        let answer = self.fleet.answer(&self.name, &req);
        Ok(ExecOutput {
            status: Some(0),
            stdout: serde_json::to_vec(&answer)?,
            stderr: Vec::new(),
        })
    }
}
