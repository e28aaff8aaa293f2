//! The run engine: connect, observe, stage, commit and roll back across hosts, in
//! parallel under a bound, with the ordering rules of an all-or-nothing apply
//! (stage and validate everywhere first; database restarts one host at a time,
//! replicas before the primary; roll back every host already committed on failure).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::database;
use crate::diff::{desired_hashes, Changes, FileChangeKind, HostChanges};
use crate::inventory::{Host, Inventory, Role};
use crate::output::Printer;
use crate::plan::{HostPlan, Plan, Service, ServiceAction};
use crate::remote::agent::{self, AgentError, CheckedAnswer, HostState};
use crate::remote::ssh::{self, SshRemote};
use crate::remote::Remote;
use crate::render::paths;
use crate::secrets::Secrets;
use crate::witness::{parse_in_sync, Witness};

/// Runs `f` for every item with at most `limit` at once, keeping the input order.
pub async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    let sem = Arc::new(Semaphore::new(limit.max(1)));
    let futures = items.into_iter().map(|item| {
        let sem = sem.clone();
        let fut = f(item);
        async move {
            let _permit = sem.acquire().await;
            fut.await
        }
    });
    futures::future::join_all(futures).await
}

/// Connects to every host of the plan; fails (closing the others) naming each host
/// that could not be reached.
pub async fn connect_all(
    plan: &Plan,
    parallel: usize,
    persist: Option<u64>,
    printer: &Arc<Printer>,
) -> Result<Vec<SshRemote>> {
    let hosts: Vec<_> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let results = bounded(hosts, parallel, |h| {
        let p = printer.clone();
        async move { connect_one(&h, p, persist, None).await }
    })
    .await;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        close_all(ok).await;
        bail!("{}", errors.join("\n"));
    }
    Ok(ok)
}

/// Connects to every host and observes each as soon as its own connection is up (no
/// host waits for the slowest connection before its observe starts). Fails, closing
/// every connection, naming each host that could not be reached, else each that could
/// not be observed.
pub async fn connect_and_observe(
    plan: &Plan,
    connecting: Connecting,
    parallel: usize,
    printer: &Arc<Printer>,
    secrets: &Secrets,
    how: Observe,
) -> Result<(Vec<SshRemote>, BTreeMap<String, HostState>)> {
    let mut tasks: BTreeMap<String, ConnectTask> = connecting.tasks.into_iter().collect();
    let pairs: Vec<(&HostPlan, Option<ConnectTask>)> = plan
        .hosts
        .iter()
        .map(|hp| (hp, tasks.remove(hp.name())))
        .collect();
    // Connections the plan does not use (none, unless a saved plan differs).
    Connecting {
        tasks: tasks.into_iter().collect(),
    }
    .abandon()
    .await;
    let results = bounded(
        pairs,
        parallel,
        |(hp, task): (&HostPlan, Option<ConnectTask>)| {
            let p = printer.clone();
            async move {
                let r = match task {
                    Some(t) => t
                        .await
                        .map_err(|e| anyhow!("{}: connecting: {e}", hp.name()))?,
                    None => connect_one(&hp.host, p.clone(), None, None).await,
                }?;
                let st = observe_checked(hp, &r, secrets, how).await;
                Ok::<_, anyhow::Error>((r, st))
            }
        },
    )
    .await;
    let mut remotes = Vec::new();
    let mut observed = BTreeMap::new();
    let (mut unreachable, mut failed) = (Vec::new(), Vec::new());
    for (hp, r) in plan.hosts.iter().zip(results) {
        match r {
            Ok((remote, st)) => {
                remotes.push(remote);
                match st {
                    Ok(st) => {
                        observed.insert(hp.name().to_string(), st);
                    }
                    Err(e) => failed.push(host_error(hp.name(), "observing", &e)),
                }
            }
            Err(e) => unreachable.push(format!("{e:#}")),
        }
    }
    if !unreachable.is_empty() || !failed.is_empty() {
        close_all(remotes).await;
        bail!(
            "{}",
            if unreachable.is_empty() {
                failed
            } else {
                unreachable
            }
            .join("\n")
        );
    }
    Ok((remotes, observed))
}

type ConnectTask = tokio::task::JoinHandle<Result<SshRemote>>;

/// Connections started before the plan is rendered (one task per host, at most
/// `parallel` setting up at once), so rendering overlaps the key exchanges.
pub struct Connecting {
    tasks: Vec<(String, ConnectTask)>,
}

impl Connecting {
    pub fn start(
        hosts: &[Host],
        parallel: usize,
        persist: Option<u64>,
        printer: &Arc<Printer>,
    ) -> Connecting {
        let permits = Arc::new(Semaphore::new(parallel.max(1)));
        let tasks = hosts
            .iter()
            .map(|h| {
                let (host, p, permits) = (h.clone(), printer.clone(), permits.clone());
                let task =
                    tokio::spawn(
                        async move { connect_one(&host, p, persist, Some(permits)).await },
                    );
                (h.name.clone(), task)
            })
            .collect();
        Connecting { tasks }
    }

    /// Waits for the connections and closes them (the run stopped before using them).
    pub async fn abandon(self) {
        let remotes = futures::future::join_all(self.tasks.into_iter().map(|(_, t)| t)).await;
        close_all(remotes.into_iter().filter_map(|r| r.ok()?.ok()).collect()).await;
    }
}

/// One host's connection, with its progress shown.
async fn connect_one(
    h: &Host,
    p: Arc<Printer>,
    persist: Option<u64>,
    permits: Option<Arc<Semaphore>>,
) -> Result<SshRemote> {
    let _permit = match permits {
        Some(s) => Some(s.acquire_owned().await.context("connection limit")?),
        None => None,
    };
    p.host_step(&h.name, "connecting");
    let r = ssh::connect_with(h, p.clone(), persist).await;
    p.host_step(
        &h.name,
        if r.is_ok() {
            "connected"
        } else {
            "unreachable"
        },
    );
    r
}

pub async fn close_all(remotes: Vec<SshRemote>) {
    futures::future::join_all(remotes.into_iter().map(|r| r.close())).await;
}

/// One `observe` per host, all in parallel.
pub async fn observe_all(
    plan: &Plan,
    remotes: &[&dyn Remote],
    secrets: &Secrets,
    parallel: usize,
) -> Result<BTreeMap<String, HostState>> {
    let pairs: Vec<_> = plan.hosts.iter().zip(remotes.iter().copied()).collect();
    let answers = bounded(pairs, parallel, |(hp, r)| observe_one(hp, r, secrets)).await;
    let mut observed = BTreeMap::new();
    let mut errors = Vec::new();
    for (hp, a) in plan.hosts.iter().zip(answers) {
        match a {
            Ok(st) => {
                observed.insert(hp.name().to_string(), st);
            }
            Err(e) => errors.push(host_error(hp.name(), "observing", &e)),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(observed)
}

/// One host's `observe`.
pub async fn observe_one(hp: &HostPlan, r: &dyn Remote, secrets: &Secrets) -> Result<HostState> {
    let v = agent::call(r, "observe", observe_request(hp, secrets)?).await?;
    HostState::from_answer(r.name(), v)
}

/// How much of a host's state a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observe {
    /// Everything the agent reports (status, rollback: history, every release).
    Full,
    /// What apply, diff and plan compare: a host the witness vouches for is taken to
    /// be exactly as planned (`src/witness.rs`); the others get a full observe.
    Witnessed,
}

/// [`observe_one`], behind the witness when the host has one and `how` allows.
pub async fn observe_checked(
    hp: &HostPlan,
    r: &dyn Remote,
    secrets: &Secrets,
    how: Observe,
) -> Result<HostState> {
    let witness = match how {
        Observe::Full => None,
        Observe::Witnessed => Witness::for_host(hp, secrets)?,
    };
    let Some(w) = witness else {
        return observe_one(hp, r, secrets).await;
    };
    let request = observe_request(hp, secrets)?;
    match agent::call_checked(r, "observe", request, &w.check()).await? {
        CheckedAnswer::Answer(v) => HostState::from_answer(r.name(), v),
        CheckedAnswer::Passed(line) => {
            let seen = parse_in_sync(&line).ok_or_else(|| {
                anyhow!(
                    "{}: unreadable answer of the witness: {}",
                    r.name(),
                    String::from_utf8_lossy(&line).trim()
                )
            })?;
            Ok(w.state(&seen))
        }
    }
}

fn observe_request(hp: &HostPlan, secrets: &Secrets) -> Result<Value> {
    let services: Vec<&str> = hp.services.iter().map(|s| s.unit()).collect();
    let db = hp
        .db
        .as_ref()
        .map(|d| database::spec(d, secrets))
        .transpose()?;
    Ok(json!({
        "op": "observe",
        "paths": desired_hashes(hp, secrets)?,
        "services": services,
        "packages": hp.packages(),
        "max_content": 1 << 20,
        "db": db,
        "release": hp.release.as_ref().map(|r| json!({"root": r.root})),
        "users": hp.users,
        "haproxy": hp.host.has(Role::Lb),
        "certs": hp.files.iter().filter(|f| f.path.ends_with(".pem")).map(|f| &f.path).collect::<Vec<_>>(),
        "ports": crate::run::preflight::observe_ports(hp),
    }))
}

/// "HOST: what: cause", with an agent's own output kept.
pub fn host_error(host: &str, what: &str, e: &anyhow::Error) -> String {
    match e.downcast_ref::<AgentError>() {
        Some(a) => format!("{host}: {what}: {}", a.describe()),
        None => {
            let msg = format!("{e:#}");
            if msg.starts_with(&format!("{host}:")) {
                msg
            } else {
                format!("{host}: {what}: {msg}")
            }
        }
    }
}

/// Who runs this apply, for locks and history.
pub struct RunInfo {
    pub run_id: String,
    pub user: String,
    pub started: f64,
    /// Seconds a host's stage waits for another run's live lock to be freed (never
    /// taken over).
    pub lock_timeout: u64,
    pub inventory: String,
    pub inventory_hash: String,
    pub git_commit: Option<String>,
    /// The inventory's hosts and addresses, recorded in the history (where
    /// `--prune-host NAME` finds a removed host's address).
    pub hosts: BTreeMap<String, String>,
}

impl RunInfo {
    /// For a run with nothing to change (never sent to a host).
    pub fn none() -> RunInfo {
        RunInfo {
            run_id: String::new(),
            user: String::new(),
            started: 0.0,
            lock_timeout: 0,
            inventory: String::new(),
            inventory_hash: String::new(),
            git_commit: None,
            hosts: BTreeMap::new(),
        }
    }

    pub fn new(inv: &Inventory, lock_timeout: u64) -> RunInfo {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .or_else(|| {
                let out = std::process::Command::new("id").arg("-un").output().ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "unknown".into());
        let machine = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        RunInfo {
            run_id: format!("{}-{}", now.as_secs(), std::process::id()),
            user: format!("{user}@{machine}"),
            started: now.as_secs_f64(),
            lock_timeout,
            inventory: inv.path.display().to_string(),
            inventory_hash: inv.source_hash.clone(),
            git_commit: git_commit(&inv.path),
            hosts: inv
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.address.to_string()))
                .collect(),
        }
    }

    fn lock(&self) -> Value {
        json!({
            "owner": self.user, "pid": std::process::id(), "started": self.started,
            "tool_version": env!("CARGO_PKG_VERSION"), "run_id": self.run_id,
        })
    }

    fn history(&self, hc: &HostChanges) -> Value {
        let files: Vec<Value> = hc
            .files
            .iter()
            .map(|f| json!({"path": f.path, "change": f.kind}))
            .collect();
        let services: Vec<Value> = hc
            .services
            .iter()
            .map(|s| json!({"service": s.service, "action": s.action}))
            .collect();
        json!({
            "time": chrono_now(), "user": self.user, "tool_version": env!("CARGO_PKG_VERSION"),
            "run_id": self.run_id, "inventory": self.inventory,
            "inventory_hash": self.inventory_hash, "git_commit": self.git_commit,
            "files": files, "services": services, "hosts": self.hosts, "boot": hc.boot,
        })
    }
}

/// The commit of the git repository holding the inventory, if any.
fn git_commit(inventory: &std::path::Path) -> Option<String> {
    let dir = inventory
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// UTC time as ISO 8601, without a date crate.
pub fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    iso_utc(secs)
}

/// Unix seconds as ISO 8601 UTC.
pub fn iso_utc(secs: u64) -> String {
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn validator(svc: Service, hp: &HostPlan) -> Option<Value> {
    match svc {
        Service::Nginx => {
            let files: Vec<&str> = hp
                .files
                .iter()
                .filter(|f| f.service == Service::Nginx)
                .map(|f| f.path.as_str())
                .collect();
            (!files.is_empty()).then(|| {
                json!({"kind": "nginx", "root": paths::NGINX_ROOT, "conf": paths::NGINX_CONF, "files": files})
            })
        }
        Service::Haproxy => hp
            .files
            .iter()
            .find(|f| f.service == svc && f.path == paths::HAPROXY_CFG)
            .map(|f| json!({"kind": "haproxy", "path": f.path})),
        Service::Keepalived => hp
            .files
            .iter()
            .find(|f| f.path == paths::KEEPALIVED_CONF)
            .map(|f| json!({"kind": "keepalived", "path": f.path})),
        Service::Mariadb => hp
            .files
            .iter()
            .find(|f| f.service == svc)
            .map(|f| json!({"kind": "mariadb", "path": f.path})),
        Service::Mysql => hp
            .files
            .iter()
            .find(|f| f.service == svc)
            .map(|f| json!({"kind": "mysql8", "path": f.path})),
        Service::Firewall => hp
            .file(paths::FIREWALL)
            .map(|f| json!({"kind": "nft", "path": f.path})),
        Service::Prometheus => hp
            .file(paths::PROMETHEUS_YML)
            .map(|f| json!({"kind": "prometheus", "path": f.path})),
        Service::BlackboxExporter => hp
            .file(paths::BLACKBOX_YML)
            .map(|f| json!({"kind": "blackbox", "path": f.path})),
        // Checked by their restart and health check, rolled back if they fail.
        Service::App | Service::NodeExporter | Service::NginxExporter | Service::MysqldExporter => {
            None
        }
    }
}

fn stage_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut expect = serde_json::Map::new();
    let mut files = Vec::new();
    let mut deletes = Vec::new();
    let mut validate = Vec::new();
    for f in &hc.files {
        expect.insert(f.path.clone(), json!(f.observed_sha256));
        match &f.new_content {
            Some(content) => files.push(json!({
                "path": f.path, "content_b64": b64.encode(content), "mode": f.mode,
                "owner": f.owner, "group": f.group, "service": f.service,
            })),
            None => deletes.push(f.path.clone()),
        }
    }
    let mut services: Vec<Service> = hc.files.iter().map(|f| f.service).collect();
    services.dedup();
    for svc in services {
        if let Some(v) = validator(svc, hp) {
            if !validate.contains(&v) {
                validate.push(v);
            }
        }
    }
    json!({
        "op": "stage", "run_id": run.run_id, "lock": run.lock(), "lock_wait_s": run.lock_timeout,
        "expect": expect, "install": hc.install, "users": hc.create_users, "files": files, "deletes": deletes,
        "validate": validate, "history": run.history(hc),
    })
}

fn actions(hp: &HostPlan, hc: &HostChanges) -> Vec<Value> {
    hc.services
        .iter()
        .map(|s| {
            let check =
                (s.action != ServiceAction::Stop).then(|| crate::services::check(s.service));
            let mut a =
                json!({"service": s.service.unit(), "action": s.action.as_str(), "check": check});
            if let (Service::Firewall, Some(secs)) = (s.service, hp.firewall_guard_s) {
                if s.action != ServiceAction::Stop {
                    a["guard"] = json!({"path": paths::FIREWALL, "seconds": secs});
                }
            }
            a
        })
        .collect()
}

/// Whether committing this host loads a new firewall (and so needs the fresh-login test).
fn loads_firewall(hp: &HostPlan, hc: &HostChanges) -> bool {
    hp.firewall_guard_s.is_some()
        && hc
            .services
            .iter()
            .any(|s| s.service == Service::Firewall && s.action != ServiceAction::Stop)
}

/// After a new firewall is loaded: a fresh SSH connection (not the multiplexed one)
/// must log in and cancel the host's anti-lockout guard. If it cannot, the guard
/// restores the previous ruleset on its own; this waits (bounded) until it has, then
/// restores the host's other files of this run, and fails naming the host.
async fn confirm_firewall(
    hp: &HostPlan,
    hc: &HostChanges,
    r: &dyn Remote,
    run: &RunInfo,
) -> Result<()> {
    let secs = hp.firewall_guard_s.unwrap_or(30);
    let req = json!({"op": "firewall-confirm", "run_id": run.run_id});
    let fresh_error = match agent::call_fresh(r, "firewall-confirm", req).await {
        Ok(v) if v["confirmed"] == true => return Ok(()),
        Ok(v) if v["fired"] == true => {
            "the anti-lockout guard fired before a fresh connection confirmed it".to_string()
        }
        Ok(v) => format!("the anti-lockout guard was not armed ({v})"),
        Err(e) => format!("{e:#}"),
    };
    // Wait for the guard over the connection that is still open (established
    // connections stay allowed), a little longer than its deadline.
    let deadline = Instant::now() + Duration::from_secs(secs + 15);
    let fired = loop {
        let state = agent::call(
            r,
            "firewall-guard",
            json!({"op": "firewall-guard", "run_id": run.run_id}),
        )
        .await;
        match state {
            Ok(v) if v["fired"] == true => break Some(v),
            Ok(_) | Err(_) if Instant::now() >= deadline => break None,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let mut history = run.history(hc);
    history["result"] = json!("rolled-back");
    let restored = agent::call(
        r,
        "rollback",
        json!({"op": "rollback", "run_id": run.run_id, "actions": actions(hp, hc),
               "history": history, "force": true}),
    )
    .await;
    let what = match (&fired, &restored) {
        (Some(_), Ok(_)) => format!(
            "the host restored its previous firewall on its own after {secs} s (anti-lockout), and the run's other files there were restored"
        ),
        (Some(_), Err(e)) => format!(
            "the host restored its previous firewall on its own after {secs} s (anti-lockout), but restoring its other files failed: {e:#}"
        ),
        (None, _) => format!(
            "the anti-lockout guard did not report within {} s: check the host's console",
            secs + 15
        ),
    };
    bail!(
        "{}: the new firewall blocks new SSH connections ({fresh_error}); {what}",
        hp.name()
    )
}

pub(crate) fn commit_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Value {
    let staged: Vec<&str> = hc
        .files
        .iter()
        .filter(|f| f.kind != FileChangeKind::Delete)
        .map(|f| f.path.as_str())
        .collect();
    let deletes: Vec<&str> = hc
        .files
        .iter()
        .filter(|f| f.kind == FileChangeKind::Delete)
        .map(|f| f.path.as_str())
        .collect();
    json!({
        "op": "commit", "run_id": run.run_id, "files": staged, "deletes": deletes,
        "actions": actions(hp, hc), "manifest": hc.manifest, "history": run.history(hc),
        "boot": hc.boot.iter().map(|b| b.request()).collect::<Vec<_>>(),
    })
}

/// What happened on one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostReport {
    pub host: String,
    pub files_changed: usize,
    pub services: Vec<String>,
    pub seconds: f64,
    pub result: String,
}

/// Applies the changes: files and services (all or nothing), then the databases.
pub async fn apply(
    plan: &Plan,
    changes: &Changes,
    remotes: &[&dyn Remote],
    run: &RunInfo,
    secrets: &Secrets,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let replica_passwords: Vec<String> = changes
        .hosts
        .iter()
        .filter(|hc| matches!(hc.db, Some(database::DbChange::ReplicaPassword { .. })))
        .map(|hc| hc.host.clone())
        .collect();
    if !changes.topology.replicas_removed.is_empty() {
        database::remove_replicas(plan, &changes.topology.replicas_removed, remotes, printer)
            .await?;
    }
    if !replica_passwords.is_empty() {
        database::rotate_replication(plan, &replica_passwords, remotes, secrets, printer).await?;
    }
    let rotation = rotation(plan, changes, remotes, secrets)?;
    let (mut reports, deferred) = apply_files(
        plan,
        changes,
        remotes,
        run,
        rotation.as_ref(),
        parallel,
        printer,
    )
    .await?;
    let db_changes: Vec<(String, database::DbChange)> = changes
        .hosts
        .iter()
        .filter_map(|hc| hc.db.clone().map(|d| (hc.host.clone(), d)))
        .collect();
    if !db_changes.is_empty() {
        database::converge(plan, &db_changes, remotes, secrets, printer).await?;
        for (host, change) in &db_changes {
            match reports.iter_mut().find(|r| &r.host == host) {
                Some(r) => r.services.push("database".into()),
                None => reports.push(HostReport {
                    host: host.clone(),
                    files_changed: 0,
                    services: vec!["database".into()],
                    seconds: 0.0,
                    result: "applied".into(),
                }),
            }
            printer.event(json!({"event": "database", "host": host, "change": change}));
        }
        // Web servers whose database converged only now went back into the pool without
        // a wait (their health check needs the database): those that served before the
        // run must serve again (the others are waited for at their release switch).
        let lbs = balancers(plan, remotes);
        for (host, change) in &db_changes {
            let served = changes.in_service.iter().any(|s| s == host);
            let switches = changes.host(host).is_some_and(|hc| hc.release.is_some());
            if served && !switches && database_comes_later(change) {
                set_backend_state(&lbs, host, "ready", true, printer).await?;
            }
        }
    }
    // Releases next: the application needs its database accounts to pass its check.
    for (host, secs) in rollout_releases(plan, changes, remotes, printer).await? {
        match reports.iter_mut().find(|r| r.host == host) {
            Some(r) => {
                r.services.push("release".into());
                r.seconds += secs;
            }
            None => reports.push(HostReport {
                host,
                files_changed: 0,
                services: vec!["release".into()],
                seconds: secs,
                result: "applied".into(),
            }),
        }
    }
    // Last, the load balancers that take in the web servers made ready above.
    if !deferred.is_empty() {
        reports.extend(commit_deferred(&deferred, run, parallel, printer).await?);
    }
    Ok(reports)
}

/// Whether the host's database is only put in place after the file phase (seeded, or
/// its server not running when observed): its health check cannot pass before.
fn database_comes_later(change: &database::DbChange) -> bool {
    matches!(
        change,
        database::DbChange::SeedReplica { .. } | database::DbChange::CheckReplica { .. }
    )
}

/// Every load balancer of the inventory, with its connection.
pub fn balancers<'a>(
    plan: &'a Plan,
    remotes: &[&'a dyn Remote],
) -> Vec<(&'a HostPlan, &'a dyn Remote)> {
    // Those outside --limit too: their remotes follow the plan's hosts'.
    (plan.hosts.iter().chain(&plan.outside_balancers))
        .zip(remotes.iter().copied())
        .filter(|(hp, _)| hp.host.has(Role::Lb))
        .collect()
}

/// Switches web servers to their new release one at a time, each drained from the load
/// balancers while its application restarts; on failure every host switched in this
/// run goes back to its previous release. Returns (host, seconds) per switched host.
async fn rollout_releases(
    plan: &Plan,
    changes: &Changes,
    remotes: &[&dyn Remote],
    printer: &Printer,
) -> Result<Vec<(String, f64)>> {
    let lbs = balancers(plan, remotes);
    let mut switched: Vec<(&HostPlan, &dyn Remote, Option<String>)> = Vec::new();
    let mut done = Vec::new();
    for (hp, r) in plan.hosts.iter().zip(remotes.iter().copied()) {
        let Some(rc) = changes.host(hp.name()).and_then(|hc| hc.release.as_ref()) else {
            continue;
        };
        let t0 = Instant::now();
        let result = rollout_one(hp, r, &rc.to, &lbs, printer).await;
        match result {
            Ok(()) => {
                printer.event(
                    json!({"event": "release", "host": hp.name(), "from": rc.from, "to": rc.to}),
                );
                switched.push((hp, r, rc.from.clone()));
                done.push((hp.name().to_string(), t0.elapsed().as_secs_f64()));
            }
            Err(e) => {
                let mut notes = Vec::new();
                for (hp, r, prev) in switched.iter().rev() {
                    let Some(prev) = prev else { continue };
                    match rollout_one(hp, *r, prev, &lbs, printer).await {
                        Ok(()) => notes.push(format!("{} is back on release {prev}", hp.name())),
                        Err(e) => notes.push(format!(
                            "{}: could NOT switch back to {prev}: {e:#}",
                            hp.name()
                        )),
                    }
                }
                let notes = if notes.is_empty() {
                    String::new()
                } else {
                    format!("\n{}.", notes.join("; "))
                };
                return Err(e).context(format!("deploying release {}{notes}", rc.to));
            }
        }
    }
    Ok(done)
}

/// Drain, switch the release (the agent restarts the app and checks it, switching back
/// itself on failure), put back into the pool.
pub async fn rollout_one(
    hp: &HostPlan,
    r: &dyn Remote,
    id: &str,
    lbs: &[(&HostPlan, &dyn Remote)],
    printer: &Printer,
) -> Result<()> {
    set_backend_state(lbs, hp.name(), "drain", true, printer).await?;
    printer.status("Switching", format!("{} to release {id}", hp.name()));
    let result = switch_release(hp, r, id).await.map(|_| ());
    // Its release and database are in place: it must pass its health check now.
    let back = set_backend_state(lbs, hp.name(), "ready", true, printer).await;
    result?;
    back
}

/// A host taking part in the file/release phase.
type Work<'a> = (&'a HostPlan, &'a HostChanges, &'a dyn Remote);

/// Files, services and releases: upload and stage everywhere first, then commit; hosts
/// whose application or database restarts go one at a time (drained from the load
/// balancers while they do); any failure restores every host changed in the run.
/// Database passwords that change in this run, on the primary: each web server's own
/// account is changed just before its application restarts with the new password
/// (drained), so the others keep working with theirs until their turn.
struct Rotation<'a> {
    primary: &'a HostPlan,
    remote: &'a dyn Remote,
    /// The primary's database spec (accounts with password hashes).
    spec: Value,
    /// user@host of each account whose password changes.
    accounts: Vec<String>,
}

fn rotation<'a>(
    plan: &'a Plan,
    changes: &Changes,
    remotes: &[&'a dyn Remote],
    secrets: &Secrets,
) -> Result<Option<Rotation<'a>>> {
    let Some(primary) = plan.db_primary() else {
        return Ok(None);
    };
    let Some(database::DbChange::ConvergePrimary { rotate, .. }) =
        changes.host(primary.name()).and_then(|hc| hc.db.as_ref())
    else {
        return Ok(None);
    };
    let Some(remote) = database::remote_of(plan, remotes, primary.name()) else {
        return Ok(None);
    };
    if rotate.is_empty() {
        return Ok(None);
    }
    let db = primary
        .db
        .as_ref()
        .context("the primary has a database plan")?;
    Ok(Some(Rotation {
        primary,
        remote,
        spec: database::spec(db, secrets)?,
        accounts: rotate.clone(),
    }))
}

/// Changes the database accounts a web server's application uses (if their password
/// changes in this run) on the primary, and waits until the host's own database (a
/// replica it reads from) has the change too.
async fn rotate_accounts_of(
    hp: &HostPlan,
    r: &dyn Remote,
    rot: &Rotation<'_>,
    printer: &Printer,
) -> Result<()> {
    let suffix = format!("@{}", hp.host.address);
    let spec = database::spec_with_accounts(&rot.spec, |a| {
        a.ends_with(&suffix) && rot.accounts.iter().any(|x| x == a)
    });
    if spec["users"].as_array().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    printer.status(
        "Database",
        format!(
            "{}: new password for {}'s account(s)",
            rot.primary.name(),
            hp.name()
        ),
    );
    let answer = agent::call(
        rot.remote,
        "db-primary",
        json!({"op": "db-primary", "db": spec}),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(host_error(
            rot.primary.name(),
            &format!("changing {}'s database password", hp.name()),
            &e
        ))
    })?;
    if hp
        .db
        .as_ref()
        .is_some_and(|d| d.role == crate::plan::DbRole::Replica)
    {
        let gtid = answer["gtid"].as_str().unwrap_or("");
        agent::call(
            r,
            "db-catch-up",
            json!({"op": "db-catch-up", "gtid": gtid, "timeout_s": 30}),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(host_error(
                hp.name(),
                "waiting for the password change to replicate",
                &e
            ))
        })?;
    }
    Ok(())
}

async fn apply_files<'a>(
    plan: &'a Plan,
    changes: &'a Changes,
    remotes: &[&'a dyn Remote],
    run: &RunInfo,
    rotation: Option<&Rotation<'_>>,
    parallel: usize,
    printer: &Printer,
) -> Result<(Vec<HostReport>, Vec<Work<'a>>)> {
    let work: Vec<Work> = plan
        .hosts
        .iter()
        .zip(remotes)
        .filter_map(|(hp, r)| {
            changes
                .host(hp.name())
                .filter(|hc| !hc.files_unchanged())
                .map(|hc| (hp, hc, *r))
        })
        .collect();
    for (hp, _, _) in &work {
        printer.event(json!({"event": "host-started", "host": hp.name()}));
    }

    // Phase 0: releases are uploaded beside the current one (not yet served).
    let uploads: Vec<Work> = plan
        .hosts
        .iter()
        .zip(remotes.iter().copied())
        .filter_map(|(hp, r)| {
            changes
                .host(hp.name())
                .filter(|hc| hc.release.as_ref().is_some_and(|rc| rc.upload))
                .map(|hc| (hp, hc, r))
        })
        .collect();
    let uploaded = bounded(uploads.clone(), parallel, |(hp, _, r)| async move {
        let rel = hp
            .release
            .as_ref()
            .expect("release change has a release plan");
        printer.status(
            "Uploading",
            format!("{} release {} ({} files)", hp.name(), rel.id, rel.files),
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(rel.tar.as_slice());
        agent::call(
            r,
            "release-upload",
            json!({"op": "release-upload", "root": rel.root, "id": rel.id, "tar_b64": b64}),
        )
        .await
    })
    .await;
    let failures: Vec<String> = uploads
        .iter()
        .zip(&uploaded)
        .filter_map(|((hp, _, _), res)| {
            res.as_ref()
                .err()
                .map(|e| host_error(hp.name(), "uploading the release", e))
        })
        .collect();
    if !failures.is_empty() {
        bail!("nothing was changed on any host:\n{}", failures.join("\n"));
    }

    if work.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }

    // Phase 1: stage and validate everywhere.
    let to_stage: Vec<Work> = work
        .iter()
        .copied()
        .filter(|(_, hc, _)| !hc.files_unchanged())
        .collect();
    for (hp, _, _) in &to_stage {
        printer.status("Staging", hp.name());
    }
    let staged = bounded(to_stage.clone(), parallel, |(hp, hc, r)| async move {
        printer.host_step(hp.name(), "staging and validating");
        let res = agent::call(r, "stage", stage_request(hp, hc, run)).await;
        printer.host_step(
            hp.name(),
            if res.is_ok() {
                "validated"
            } else {
                "validation failed"
            },
        );
        res
    })
    .await;
    let mut failures = Vec::new();
    for ((hp, _, _), s) in to_stage.iter().zip(&staged) {
        if let Err(e) = s {
            failures.push(host_error(hp.name(), "staging", e));
        }
    }
    if !failures.is_empty() {
        // The failed hosts cleaned up after themselves; undo the others.
        let ok: Vec<_> = to_stage
            .iter()
            .zip(&staged)
            .filter(|(_, s)| s.is_ok())
            .map(|(w, _)| *w)
            .collect();
        abort(&ok, run, parallel, printer).await;
        for f in &failures {
            printer.event(json!({"event": "error", "message": f}));
        }
        bail!("nothing was changed on any host:\n{}", failures.join("\n"));
    }
    for ((hp, hc, _), s) in to_stage.iter().zip(&staged) {
        if let Some(old) = s.as_ref().ok().map(|a| &a["replaced_stale_lock"]) {
            if old.is_object() {
                printer.warn(format!(
                    "{}: the lock left by run {} of {} was taken: its holder had ended (the run was interrupted)",
                    hp.name(),
                    old["run_id"].as_str().unwrap_or("?"),
                    old["owner"].as_str().unwrap_or("?")
                ));
            }
        }
        printer.status(
            "Validated",
            format!("{} ({} files)", hp.name(), hc.files.len()),
        );
    }

    // Phase 2: commit. Hosts that only reload go together; hosts whose database or
    // application restarts, or that switch release, go one at a time: replicas first,
    // the primary last.
    let rolling = |hc: &HostChanges| {
        hc.services.iter().any(|s| {
            (s.service.is_database() || s.service == Service::App)
                && s.action != ServiceAction::Reload
        })
    };
    // Load balancers that gain a web server are reloaded last, once it is ready.
    let adds = !changes.topology.backends_added.is_empty();
    let (deferred, work): (Vec<Work>, Vec<Work>) = work
        .into_iter()
        .partition(|(hp, hc, _)| adds && hp.host.has(Role::Lb) && !hc.files_unchanged());
    // Web servers that leave are drained before anything else changes.
    if !changes.topology.backends_removed.is_empty() {
        let lbs = balancers(plan, remotes);
        for server in &changes.topology.backends_removed {
            if let Err(e) = set_backend_state(&lbs, server, "drain", true, printer).await {
                abort(
                    &[to_stage.as_slice(), deferred.as_slice()].concat(),
                    run,
                    parallel,
                    printer,
                )
                .await;
                return Err(e).context("nothing was changed");
            }
        }
    }
    let (mut serial, together): (Vec<Work>, Vec<Work>) =
        work.iter().copied().partition(|(_, hc, _)| rolling(hc));
    serial.sort_by_key(|(hp, _, _)| (hp.host.has(Role::DbPrimary), !hp.host.has(Role::DbReplica)));
    let lbs = balancers(plan, remotes);

    let mut done = Done::default();
    let mut reports = Vec::new();
    let mut failure: Option<String> = None;
    let together_staged: Vec<Work> = together
        .iter()
        .copied()
        .filter(|(_, hc, _)| !hc.files_unchanged())
        .collect();
    let results = bounded(together_staged.clone(), parallel, |(hp, hc, r)| {
        commit_host(hp, hc, r, run, false)
    })
    .await;
    for ((hp, hc, r), (res, took)) in together_staged.into_iter().zip(results) {
        match res {
            Ok(_) => {
                done.committed.push((hp, hc, r));
                reports.push(report(hp, hc, took, "applied", printer));
            }
            Err(e) => {
                failure.get_or_insert(host_error(hp.name(), "applying", &e));
            }
        }
    }
    let mut pending: Vec<Work> = serial.clone();
    if failure.is_none() {
        for (hp, hc, r) in serial {
            pending.retain(|(p, _, _)| p.name() != hp.name());
            let t0 = Instant::now();
            // Only a server that was in service is waited for when it goes back: one
            // never in service (first deploy) or seeded as a replica after this phase
            // cannot pass its health check yet (its release or database comes later).
            let wait_ready = changes.in_service.iter().any(|s| s == hp.name())
                && !hc.db.as_ref().is_some_and(database_comes_later);
            let step = Step {
                lbs: &lbs,
                run,
                rotation,
                wait_ready,
                printer,
            };
            match roll_host(hp, hc, r, &step, &mut done).await {
                Ok(()) => reports.push(report(hp, hc, t0.elapsed(), "applied", printer)),
                Err(e) => {
                    failure = Some(format!("{e:#}"));
                    break;
                }
            }
        }
    }
    if let Some(msg) = failure {
        // Hosts staged but never committed: drop their staged files.
        let staged_only: Vec<Work> = pending
            .into_iter()
            .chain(deferred.iter().copied())
            .filter(|(_, hc, _)| !hc.files_unchanged())
            .collect();
        abort(&staged_only, run, parallel, printer).await;
        printer.event(json!({"event": "error", "message": msg}));
        let rolled = rollback(&done.committed, run, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok((reports, deferred))
}

/// Commits the load balancers held back until new web servers were ready.
async fn commit_deferred(
    deferred: &[Work<'_>],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) -> Result<Vec<HostReport>> {
    let results = bounded(deferred.to_vec(), parallel, |(hp, hc, r)| {
        commit_host(hp, hc, r, run, false)
    })
    .await;
    let mut reports = Vec::new();
    let mut committed = Vec::new();
    let mut failure = None;
    for ((hp, hc, r), (res, took)) in deferred.iter().copied().zip(results) {
        match res {
            Ok(_) => {
                committed.push((hp, hc, r));
                reports.push(report(hp, hc, took, "applied", printer));
            }
            Err(e) => {
                failure.get_or_insert(host_error(
                    hp.name(),
                    "reloading with the new web servers",
                    &e,
                ));
            }
        }
    }
    if let Some(msg) = failure {
        let rolled = rollback(&committed, run, parallel, printer).await;
        bail!("{msg}\n{rolled}");
    }
    Ok(reports)
}

/// What a run has changed so far, to undo on failure.
#[derive(Default)]
struct Done<'a> {
    committed: Vec<Work<'a>>,
}

/// What every host of the rolling group shares.
struct Step<'s> {
    lbs: &'s [(&'s HostPlan, &'s dyn Remote)],
    run: &'s RunInfo,
    rotation: Option<&'s Rotation<'s>>,
    /// Wait (bounded) until the load balancers see the host UP again.
    wait_ready: bool,
    printer: &'s Printer,
}

/// One host of the rolling group: drained on every load balancer, committed, switched
/// to its new release, checked, and put back into the pool.
async fn roll_host<'a>(
    hp: &'a HostPlan,
    hc: &'a HostChanges,
    r: &'a dyn Remote,
    step: &Step<'_>,
    done: &mut Done<'a>,
) -> Result<()> {
    let Step {
        lbs,
        run,
        rotation,
        wait_ready,
        printer,
    } = *step;
    let web = hp.host.has(Role::Web);
    if web {
        set_backend_state(lbs, hp.name(), "drain", true, printer).await?;
    }
    let result = async {
        let app_restarts = hc
            .services
            .iter()
            .any(|s| s.service == Service::App && s.action != ServiceAction::Stop);
        if let (Some(rot), true) = (rotation, app_restarts) {
            rotate_accounts_of(hp, r, rot, printer).await?;
        }
        if !hc.files_unchanged() {
            printer.status("Restarting", format!("{} (one host at a time)", hp.name()));
            let (res, _) = commit_host(hp, hc, r, run, hc.release.is_some()).await;
            res.map_err(|e| anyhow::anyhow!(host_error(hp.name(), "applying", &e)))?;
            done.committed.push((hp, hc, r));
        }
        if hp
            .db
            .as_ref()
            .is_some_and(|d| d.role == crate::plan::DbRole::Replica)
            && hc.services.iter().any(|s| s.service.is_database())
            // It replicated when observed (otherwise it is seeded after this phase).
            && hc.db.is_none()
        {
            agent::call(
                r,
                "db-wait-replica",
                json!({"op": "db-wait-replica", "timeout_s": 60}),
            )
            .await
            .map_err(|e| anyhow::anyhow!(host_error(hp.name(), "waiting for replication", &e)))?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if web {
        // Back into the pool whatever happened: on failure its old state was restored.
        // (Not waited for after a failure: the run fails anyway, and a host that stopped
        // answering would only hold the error back.)
        let wait = wait_ready && result.is_ok();
        let back = set_backend_state(lbs, hp.name(), "ready", wait, printer).await;
        result?;
        return back;
    }
    result
}

async fn switch_release(hp: &HostPlan, r: &dyn Remote, id: &str) -> Result<Value> {
    let rel = hp.release.as_ref().context("no release planned")?;
    agent::call(
        r,
        "release-switch",
        json!({"op": "release-switch", "root": rel.root, "id": id, "keep": rel.keep,
               "service": Service::App.unit(),
               "check": {"port": 80, "path": "/health", "host": hp.host.name, "timeout_s": 30}}),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(host_error(
            hp.name(),
            &format!("switching to release {id}"),
            &e
        ))
    })
}

/// Sets a web server's state in the `web` backend of every load balancer; with `wait`,
/// until its sessions ended (drain) or its health check passes (ready), bounded.
pub(crate) async fn set_backend_state(
    lbs: &[(&HostPlan, &dyn Remote)],
    server: &str,
    state: &str,
    wait: bool,
    printer: &Printer,
) -> Result<()> {
    let timeout_s = if wait { 30 } else { 0 };
    for (lb, r) in lbs {
        printer.detail("Balancer", format!("{}: {server} -> {state}", lb.name()));
        let answer = agent::call(
            *r,
            "haproxy-server",
            json!({"op": "haproxy-server", "backend": "web", "server": server, "state": state, "timeout_s": timeout_s}),
        )
        .await
        .map_err(|e| anyhow::anyhow!(host_error(lb.name(), &format!("setting {server} to {state}"), &e)))?;
        if answer["absent"] == true {
            continue;
        }
        if wait && state == "ready" && !answer["status"].as_str().unwrap_or("").starts_with("UP") {
            printer.warn(format!(
                "{}: {server} is {} after 30 s",
                lb.name(),
                answer["status"]
            ));
        }
    }
    Ok(())
}

/// Commits a host's staged files; `skip_app` leaves the application's restart to the
/// release switch that follows.
async fn commit_host(
    hp: &HostPlan,
    hc: &HostChanges,
    r: &dyn Remote,
    run: &RunInfo,
    skip_app: bool,
) -> (Result<Value>, Duration) {
    let t0 = Instant::now();
    let mut req = commit_request(hp, hc, run);
    if skip_app {
        if let Some(actions) = req["actions"].as_array_mut() {
            actions.retain(|a| a["service"] != Service::App.unit());
        }
    }
    let mut res = agent::call(r, "commit", req).await;
    if res.is_ok() && loads_firewall(hp, hc) {
        // On failure the host is already restored: it must not count as committed.
        if let Err(e) = confirm_firewall(hp, hc, r, run).await {
            res = Err(e);
        }
    }
    (res, t0.elapsed())
}

fn report(
    hp: &HostPlan,
    hc: &HostChanges,
    took: Duration,
    result: &str,
    printer: &Printer,
) -> HostReport {
    for f in &hc.files {
        printer.event(
            json!({"event": "file-changed", "host": hp.name(), "path": f.path, "change": f.kind}),
        );
    }
    for s in &hc.services {
        printer.event(json!({"event": "service-action", "host": hp.name(), "service": s.service, "action": s.action}));
    }
    let mut services: Vec<String> = hc
        .services
        .iter()
        .map(|s| format!("{} {}", s.service, s.action.as_str()))
        .collect();
    if hc.manifest_only() {
        services.push("manifest recorded".into());
    }
    for b in &hc.boot {
        printer.event(b.event(hp.name()));
        services.push(b.done());
    }
    printer.host_done(hp.name(), "applied");
    printer.status(
        "Applied",
        format!(
            "{}: {} files{}",
            hp.name(),
            hc.files.len(),
            if services.is_empty() {
                String::new()
            } else {
                format!(", {}", services.join(", "))
            }
        ),
    );
    HostReport {
        host: hp.name().to_string(),
        files_changed: hc.files.len(),
        services,
        seconds: took.as_secs_f64(),
        result: result.into(),
    }
}

async fn abort(
    hosts: &[(&HostPlan, &HostChanges, &dyn Remote)],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) {
    let results = bounded(hosts.to_vec(), parallel, |(_, _, r)| async move {
        agent::call(r, "abort", json!({"op": "abort", "run_id": run.run_id})).await
    })
    .await;
    for ((hp, _, _), res) in hosts.iter().zip(results) {
        match res {
            Ok(_) => printer.status("Unstaged", hp.name()),
            Err(e) => printer.warn(host_error(hp.name(), "removing staged files", &e)),
        }
    }
}

/// Restores the hosts committed in this run; returns a sentence for the error.
async fn rollback(
    hosts: &[(&HostPlan, &HostChanges, &dyn Remote)],
    run: &RunInfo,
    parallel: usize,
    printer: &Printer,
) -> String {
    if hosts.is_empty() {
        return "No other host had been changed.".into();
    }
    let results = bounded(hosts.to_vec(), parallel, |(hp, hc, r)| async move {
        let mut history = run.history(hc);
        history["result"] = json!("rolled-back");
        agent::call(
            r,
            "rollback",
            json!({"op": "rollback", "run_id": run.run_id, "actions": actions(hp, hc), "history": history}),
        )
        .await
    })
    .await;
    let mut restored = Vec::new();
    let mut failed = Vec::new();
    for ((hp, _, _), res) in hosts.iter().zip(results) {
        match res {
            Ok(_) => {
                printer.status("Restored", hp.name());
                restored.push(hp.name().to_string());
            }
            Err(e) => failed.push(host_error(hp.name(), "restoring", &e)),
        }
    }
    let mut s = format!("Restored the previous files on {}.", restored.join(", "));
    if !failed.is_empty() {
        s.push_str(&format!(" Could NOT restore: {}", failed.join("; ")));
    }
    s
}
