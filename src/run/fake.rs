//! A fake [`Remote`] for unit tests of the run (test-only, no Docker): an in-memory
//! fleet of hosts that answers the agent requests a run sends (observe, stage, commit,
//! abort, rollback, the load balancers' backend state, the release and database steps)
//! the way `src/agent` does, keeping each host's live files, staged files and backups,
//! and logging every request. A failure can be injected at one host and [`Phase`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::diff::sha256_hex;
use crate::inventory::Role;
use crate::plan::{HostPlan, Init, Plan};
use crate::remote::{ExecOutput, Input, Remote, Sink};
use crate::secrets::Secrets;

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
    manifest: Value,
}

#[derive(Default)]
struct Host {
    files: BTreeMap<String, File>,
    manifest: Value,
    staged: Option<Staged>,
    backup: Option<Backup>,
    /// On a load balancer: each web server of the `web` backend, "ready" or "drain".
    backends: BTreeMap<String, String>,
    /// What observe reports beyond files and services (database, release, users).
    observed: Value,
}

/// The fake hosts, shared by their [`FakeRemote`]s.
#[derive(Default)]
pub struct Fleet {
    hosts: Mutex<BTreeMap<String, Host>>,
    log: Mutex<Vec<Event>>,
    fail: Mutex<Option<(String, Phase)>>,
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

    /// The agent's answer to one request on `host`.
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
        let h = hosts.get_mut(host).expect("a host of the fleet");
        let result = match op.as_str() {
            "observe" => Ok(observe(host, h, req)),
            "stage" => self.stage(host, h, req),
            "commit" => self.commit(host, h, req),
            "abort" => Ok(abort(h, req)),
            "rollback" => rollback(h, req),
            "haproxy-server" => Ok(set_backend(h, req)),
            "release-upload" | "release-switch" | "db-wait-replica" | "db-catch-up"
            | "db-primary" => Ok(json!({})),
            _ => Err(("request", format!("the fake agent does not know op {op:?}"))),
        };
        match result {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err((kind, message)) => {
                json!({"ok": false, "error": {"kind": kind, "message": message}})
            }
        }
    }

    fn stage(&self, host: &str, h: &mut Host, req: &Value) -> Result<Value, Refusal> {
        if self.fails(host, Phase::Stage) {
            return Err(("io", format!("{host}: no space left on device (injected)")));
        }
        for (path, want) in req["expect"].as_object().into_iter().flatten() {
            let got = h.files.get(path).map(|f| sha256_hex(f.content.as_bytes()));
            if got.as_deref() != want.as_str() {
                return Err(("conflict", format!("{path} changed since observed")));
            }
        }
        let files = req["files"].as_array().into_iter().flatten();
        let staged = Staged {
            run_id: str_of(req, "run_id").to_string(),
            files: files
                .map(|f| (str_of(f, "path").into(), staged_file(f)))
                .collect(),
            deletes: strings(&req["deletes"]),
        };
        if self.fails(host, Phase::Validate) {
            // The agent removes what it staged before it answers.
            return Err((
                "validation",
                format!("{host}: config test failed (injected)"),
            ));
        }
        h.staged = Some(staged);
        Ok(json!({"staged": [], "installed": [], "validated": []}))
    }

    fn commit(&self, host: &str, h: &mut Host, req: &Value) -> Result<Value, Refusal> {
        let run_id = str_of(req, "run_id");
        let Some(staged) = h.staged.take().filter(|s| s.run_id == run_id) else {
            return Err(("request", format!("run {run_id} has nothing staged")));
        };
        if self.fails(host, Phase::Commit) {
            return Err(("io", format!("{host}: rename failed (injected)")));
        }
        let wanted = strings(&req["files"]);
        let deletes = strings(&req["deletes"]);
        let before = h.files.clone();
        let backup = wanted.iter().chain(&deletes);
        let backup = backup
            .map(|p| (p.clone(), h.files.get(p).cloned()))
            .collect();
        for p in &wanted {
            h.files.insert(p.clone(), staged.files[p].clone());
        }
        for p in deletes.iter().filter(|p| staged.deletes.contains(p)) {
            h.files.remove(p);
        }
        let reloads = req["actions"].as_array().is_some_and(|a| !a.is_empty());
        for (phase, what) in [(Phase::Reload, "reload"), (Phase::Health, "check")] {
            if reloads && self.fails(host, phase) {
                // The agent restores its own host before it answers.
                h.files = before;
                let msg =
                    format!("{host}: {what} failed (injected); the previous files were restored");
                return Err(("service", msg));
            }
        }
        let manifest = std::mem::replace(&mut h.manifest, req["manifest"].clone());
        h.backup = Some(Backup {
            run_id: run_id.to_string(),
            files: backup,
            manifest,
        });
        Ok(json!({"actions": [], "boot": []}))
    }
}

/// Drops a run's staged files (not once committed).
fn abort(h: &mut Host, req: &Value) -> Value {
    let run_id = str_of(req, "run_id");
    let removed = h.staged.take_if(|s| s.run_id == run_id).is_some();
    json!({"removed": removed})
}

/// Puts back what a run's commit replaced.
fn rollback(h: &mut Host, req: &Value) -> Result<Value, Refusal> {
    let run_id = str_of(req, "run_id");
    let Some(backup) = h.backup.take_if(|b| b.run_id == run_id) else {
        return Err(("request", format!("run {run_id} has no committed changes")));
    };
    for (path, old) in backup.files {
        match old {
            Some(f) => h.files.insert(path, f),
            None => h.files.remove(&path),
        };
    }
    h.manifest = backup.manifest;
    Ok(json!({"restored": []}))
}

/// `haproxy-server` on a load balancer: the server's new state, or absent.
fn set_backend(h: &mut Host, req: &Value) -> Value {
    let server = str_of(req, "server");
    let Some(state) = h.backends.get_mut(server) else {
        return json!({"absent": true});
    };
    *state = str_of(req, "state").to_string();
    let status = if state == "ready" { "UP" } else { "DRAIN" };
    json!({"absent": false, "status": status})
}

/// What `observe` reports: every requested and manifest file, every service running
/// and enabled, every package installed, and the host's other state.
fn observe(host: &str, h: &Host, req: &Value) -> Value {
    let mut paths: Vec<String> = req["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, _)| p.clone())
        .collect();
    paths.extend(
        h.manifest
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| str_of(e, "path").to_string()),
    );
    let files: serde_json::Map<String, Value> = paths
        .into_iter()
        .map(|p| {
            let state = match h.files.get(&p) {
                Some(f) => json!({"exists": true, "sha256": sha256_hex(f.content.as_bytes()),
                    "mode": f.mode, "owner": f.owner, "group": f.group, "size": f.content.len()}),
                None => json!({"exists": false}),
            };
            (p, state)
        })
        .collect();
    let running = json!({"running": true, "pid": 1, "enabled": true});
    let services: serde_json::Map<String, Value> = strings(&req["services"])
        .into_iter()
        .map(|s| (s, running.clone()))
        .collect();
    let packages: serde_json::Map<String, Value> = strings(&req["packages"])
        .into_iter()
        .map(|p| (p, json!(true)))
        .collect();
    let haproxy = (req["haproxy"] == true).then(|| {
        let servers = h.backends.iter();
        let status = |s: &str| if s == "ready" { "UP" } else { "DRAIN" };
        servers
            .map(|(w, s)| json!({"backend": "web", "server": w, "status": status(s)}))
            .collect::<Vec<_>>()
    });
    let mut v = h.observed.clone();
    let more = json!({"init": "systemd", "hostname": host, "files": files, "services": services,
        "packages": packages, "manifest": h.manifest, "haproxy": haproxy,
        "last_history": {"result": "applied"}});
    v.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    v
}

/// A host as `hp` wants it.
fn host_as_planned(plan: &Plan, hp: &HostPlan, secrets: &Secrets) -> Host {
    let planned = hp
        .files
        .iter()
        .filter(|f| f.init.is_none_or(|i| i == Init::Systemd));
    let mut files = BTreeMap::new();
    let mut manifest = Vec::new();
    for f in planned {
        let content = secrets.resolve(&f.content).expect("the test's secrets");
        manifest.push(json!({"path": f.path, "sha256": sha256_hex(content.as_bytes()),
            "mode": f.mode_string(), "owner": f.owner, "group": f.group, "service": f.service.unit()}));
        let file = File {
            content,
            mode: f.mode_string(),
            owner: f.owner.clone(),
            group: f.group.clone(),
        };
        files.insert(f.path.clone(), file);
    }
    let backends = if hp.host.has(Role::Lb) {
        plan.backends
            .iter()
            .map(|w| (w.clone(), "ready".to_string()))
            .collect()
    } else {
        BTreeMap::new()
    };
    Host {
        files,
        manifest: Value::Array(manifest),
        backends,
        observed: observed_extras(hp),
        ..Host::default()
    }
}

/// The database (primary with its accounts, or a replica replicating), the release
/// and the users of a host as planned.
fn observed_extras(hp: &HostPlan) -> Value {
    let db = hp.db.as_ref().map(|db| match &db.primary {
        None => {
            let users: Vec<Value> = db.users.iter()
                .map(|u| json!({"user": u.user, "host": u.host, "exists": true, "password_ok": true, "grants_ok": true}))
                .collect();
            json!({"running": true, "database_exists": true, "users": users, "missing_tables": []})
        }
        Some(p) => json!({"running": true, "read_only": true, "replica_password_ok": true,
            "replica": {"master_host": p.address, "master_port": p.port, "master_user": p.user,
                        "io_running": "Yes", "sql_running": "Yes", "using_gtid": "Current_Pos"}}),
    });
    let release = hp
        .release
        .as_ref()
        .map(|r| json!({"current": r.id, "releases": [r.id]}));
    let users: serde_json::Map<String, Value> =
        hp.users.iter().map(|u| (u.clone(), json!(true))).collect();
    json!({"db": db, "release": release, "users": users})
}

fn staged_file(f: &Value) -> File {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64
        .decode(str_of(f, "content_b64"))
        .expect("base64 content");
    File {
        content: String::from_utf8(bytes).expect("text content"),
        mode: str_of(f, "mode").to_string(),
        owner: str_of(f, "owner").to_string(),
        group: str_of(f, "group").to_string(),
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    let items = v.as_array().into_iter().flatten();
    items
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
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
