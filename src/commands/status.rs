//! `foobar-infra status`: per host, reachability, services, drift, release, replication,
//! the load balancers' view of the backends, and the last apply; exit 0 when healthy.

use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use super::remote::{limit, secret_names};
use super::{load_and_render, runtime, Outcome};
use crate::cli::RemoteArgs;
use crate::database::replica;
use crate::diff::diff_host;
use crate::output::Printer;
use crate::plan::{DbRole, HostPlan};
use crate::remote::agent::{DbState, HaproxyRow, HaproxyView, HostState};
use crate::remote::ssh;
use crate::render::paths;
use crate::run::observe::observe_one;
use crate::run::parallel::bounded;
use crate::run::preflight::port_conflicts;
use crate::secrets::Secrets;

#[derive(Debug, Serialize)]
struct HostStatus {
    host: String,
    reachable: bool,
    error: Option<String>,
    services: Vec<Value>,
    in_sync: bool,
    drift: Vec<String>,
    release: Option<String>,
    database: Option<Value>,
    backends: Option<Value>,
    frontends: Option<Value>,
    last_apply: Option<Value>,
    certificates: Vec<Value>,
    warnings: Vec<String>,
    problems: Vec<String>,
}

/// The frontends (and listen sections) a HAProxy config declares.
fn config_frontends(cfg: &str) -> Vec<String> {
    cfg.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("frontend" | "listen"), Some(name)) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// What is wrong with a load balancer as HAProxy itself reports it (`show stat`, read
/// by the agent's haproxy_observe): the servers of backend `web` are not exactly the
/// inventory's web servers (`servers`), one of them is not UP, or a frontend of the
/// planned config (`frontends`) is missing or not OPEN. A HAProxy running another
/// config (the distribution's, after a reload that failed) fails all of these.
fn balancer_problems(
    live: Option<&HaproxyView>,
    servers: &[String],
    frontends: &[String],
) -> Vec<String> {
    let live = match live {
        None => {
            return vec![
                "HAProxy's runtime API (/run/haproxy/admin.sock) does not answer: \
                         its backends and frontends cannot be checked"
                    .into(),
            ]
        }
        Some(HaproxyView::Unreadable { error }) => {
            return vec![format!("HAProxy's runtime API: {error}")];
        }
        Some(view) => view,
    };
    let mut problems = Vec::new();
    let web: Vec<(&str, &str, bool)> = live.servers("web").collect();
    if web.is_empty() {
        problems.push("backend web is not there: HAProxy does not run the planned config".into());
    } else {
        for s in servers.iter().filter(|s| !web.iter().any(|(n, ..)| n == s)) {
            problems.push(format!(
                "backend web has no server {s} (an inventory web server)"
            ));
        }
        for (name, status, backup) in &web {
            if !servers.iter().any(|s| s == name) {
                problems.push(format!(
                    "backend web has server {name}, which is not a web server of the inventory"
                ));
            } else if !status.starts_with("UP") {
                let backup = if *backup { " (backup)" } else { "" };
                problems.push(format!("backend web/{name}{backup} is {status}"));
            }
        }
    }
    for f in frontends {
        match live.frontend(f) {
            None => problems.push(format!(
                "frontend {f} is not there: HAProxy does not run the planned config"
            )),
            Some(status) if status != "OPEN" => {
                problems.push(format!("frontend {f} is {status}, not OPEN"))
            }
            Some(_) => {}
        }
    }
    problems
}

fn host_status(
    hp: &HostPlan,
    st: &HostState,
    secrets: &Secrets,
    backends: &[String],
    inventory: &std::path::Path,
) -> HostStatus {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let services: Vec<Value> = hp
        .services
        .iter()
        .map(|s| {
            let running = st.services.get(s.unit()).is_some_and(|x| x.running);
            if !running {
                problems.push(format!("{} is not running", s.unit()));
            }
            json!({"service": s.unit(), "running": running})
        })
        .collect();
    let (in_sync, drift) = drift(hp, st, secrets);
    let database = st
        .db
        .as_ref()
        .map(|db| database_status(hp, st, db, inventory, &mut problems));
    let certificates = certificate_status(st, &mut problems, &mut warnings);
    let haproxy_runs = st.services.get("haproxy").is_some_and(|x| x.running);
    if let (Some(cfg), true) = (hp.file(paths::HAPROXY_CFG), haproxy_runs) {
        let frontends = config_frontends(&cfg.content);
        problems.extend(balancer_problems(st.haproxy.as_ref(), backends, &frontends));
    }
    problems.extend(port_conflicts(hp, st).iter().map(|c| c.describe()));
    let rows = |frontends: bool| -> Option<Value> {
        let HaproxyView::Rows(rows) = st.haproxy.as_ref()? else {
            return None;
        };
        let rows = rows
            .iter()
            .filter(|r| matches!(r, HaproxyRow::Frontend { .. }) == frontends);
        serde_json::to_value(rows.collect::<Vec<_>>()).ok()
    };
    HostStatus {
        host: hp.name().to_string(),
        reachable: true,
        error: None,
        services,
        in_sync,
        drift,
        release: st.release.as_ref().and_then(|r| r.current.clone()),
        database,
        backends: rows(false),
        frontends: rows(true),
        last_apply: st.last_history.clone(),
        certificates,
        warnings,
        problems,
    }
}

pub fn run(args: &RemoteArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (inventory, plan) = load_and_render(&args.inventory, args.templates.templates.as_deref())?;
    let plan = limit(plan, &args.limit)?;
    let secrets = Secrets::load(&inventory, &secret_names(&plan))?;
    let statuses: Vec<HostStatus> = runtime()?.block_on(async {
        bounded(
            plan.hosts.iter().collect(),
            args.parallel,
            |hp: &HostPlan| {
                let p = p.clone();
                let secrets = &secrets;
                let backends = &plan.backends;
                async move {
                    let observed = match ssh::connect(&hp.host, p).await {
                        Ok(r) => {
                            let mut st = observe_one(hp, &r, secrets).await;
                            // A replica reconnecting by itself gets a short grace.
                            if let Ok(st) = st.as_mut() {
                                replica::settle(hp, &r, st).await;
                            }
                            let _ = r.close().await;
                            st
                        }
                        Err(e) => Err(e),
                    };
                    match observed {
                        Ok(st) => host_status(hp, &st, secrets, backends, &args.inventory),
                        Err(e) => HostStatus {
                            host: hp.name().to_string(),
                            reachable: false,
                            error: Some(format!("{e:#}")),
                            services: Vec::new(),
                            in_sync: false,
                            drift: Vec::new(),
                            release: None,
                            database: None,
                            backends: None,
                            frontends: None,
                            last_apply: None,
                            certificates: Vec::new(),
                            warnings: Vec::new(),
                            problems: vec![format!("unreachable: {e:#}")],
                        },
                    }
                }
            },
        )
        .await
    });
    let healthy = statuses.iter().all(|s| s.problems.is_empty());
    // The last canary's verdict, as this controller kept it (issue 22).
    let canary = crate::run::canary::last_verdict(&inventory.path);
    if p.json {
        p.json_line(
            &json!({"schema": 1, "command": "status", "healthy": healthy, "hosts": statuses,
                    "canary": canary}),
        );
    } else {
        print_table(&statuses, p);
        if let Some(line) = canary.as_ref().map(crate::run::canary::verdict_line) {
            p.out(line);
        }
    }
    if healthy {
        Ok(Outcome::Success)
    } else {
        let n: usize = statuses.iter().map(|s| s.problems.len()).sum();
        anyhow::bail!("{n} problem(s): the stack is not healthy")
    }
}

fn print_table(statuses: &[HostStatus], p: &Printer) {
    p.out(format!(
        "{:<10} {:<9} {:<34} {:<8} {:<13} {:<30} {}",
        "HOST", "REACHABLE", "SERVICES", "DRIFT", "RELEASE", "DATABASE", "LAST APPLY"
    ));
    for s in statuses {
        p.out(table_row(s));
    }
    for s in statuses {
        if let Some(servers) = s.backends.as_ref().and_then(|v| v.as_array()) {
            let list: Vec<String> = servers
                .iter()
                .filter(|x| x["backend"] == "web")
                .map(|x| {
                    format!(
                        "{}={}",
                        x["server"].as_str().unwrap_or("?"),
                        x["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            p.out(format!("{}: backend web: {}", s.host, list.join(" ")));
        }
        if let Some(rows) = s.frontends.as_ref().and_then(|v| v.as_array()) {
            let list: Vec<String> = rows
                .iter()
                .map(|x| {
                    format!(
                        "{}={}",
                        x["frontend"].as_str().unwrap_or("?"),
                        x["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            p.out(format!("{}: frontends: {}", s.host, list.join(" ")));
        }
    }
    for s in statuses {
        for d in &s.drift {
            p.out(format!("{}: drift: {d}", s.host));
        }
        for w in &s.warnings {
            p.out(format!("{}: WARNING: {w}", s.host));
        }
        for prob in &s.problems {
            p.out(format!("{}: PROBLEM: {prob}", s.host));
        }
    }
}

/// One host's line of the status table: reachable, services, drift, release, database
/// and last apply.
fn table_row(s: &HostStatus) -> String {
    let services = s
        .services
        .iter()
        .map(|v| {
            format!(
                "{}{}",
                v["service"].as_str().unwrap_or(""),
                if v["running"] == true { "" } else { "(down)" }
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let db = s.database.as_ref().map(|d| {
        let role = d["role"].as_str().unwrap_or("");
        match d["replication"].as_object() {
            Some(r) if role == "replica" => format!(
                "replica io={} sql={} lag={}",
                r["io_running"].as_str().unwrap_or("?"),
                r["sql_running"].as_str().unwrap_or("?"),
                r["seconds_behind"]
                    .as_i64()
                    .map(|x| format!("{x}s"))
                    .unwrap_or("-".into())
            ),
            _ => role.to_string(),
        }
    });
    let last = s.last_apply.as_ref().map(|h| {
        format!(
            "{} {}",
            h["time"].as_str().unwrap_or("?"),
            h["result"].as_str().unwrap_or("?")
        )
    });
    format!(
        "{:<10} {:<9} {:<34} {:<8} {:<13} {:<30} {}",
        s.host,
        if s.reachable { "yes" } else { "NO" },
        if s.reachable { services } else { "-".into() },
        if !s.reachable {
            "-"
        } else if s.in_sync {
            "in sync"
        } else {
            "DRIFT"
        },
        s.release.as_deref().unwrap_or("-"),
        db.unwrap_or_else(|| "-".into()),
        last.unwrap_or_else(|| "-".into()),
    )
}

/// Whether the host is as planned, and what differs (files, release, database).
fn drift(hp: &HostPlan, st: &HostState, secrets: &Secrets) -> (bool, Vec<String>) {
    match diff_host(hp, st, secrets) {
        Ok(hc) => {
            let mut d: Vec<String> = hc
                .files
                .iter()
                .map(|f| format!("{:?} {}", f.kind, f.path).to_lowercase())
                .collect();
            if let Some(r) = &hc.release {
                d.push(format!(
                    "release {} (want {})",
                    r.from.as_deref().unwrap_or("none"),
                    r.to
                ));
            }
            if let Some(db) = &hc.db {
                d.push(db.describe());
            }
            (d.is_empty(), d)
        }
        Err(e) => (false, vec![format!("cannot compare: {e:#}")]),
    }
}
/// The database server's state as status reports it; its problems (not running, not
/// replicating, a read-only primary) are added to `problems`.
fn database_status(
    hp: &HostPlan,
    st: &HostState,
    db: &DbState,
    inventory: &std::path::Path,
    problems: &mut Vec<String>,
) -> Value {
    let reseed = |host: &str| replica::reseed_command(inventory, host);

    let role = hp.db.as_ref().map(|d| d.role);
    if !db.running {
        problems.push("the database server is not running".into());
    }
    let replica = db.replica.as_ref();
    if role == Some(DbRole::Replica) && db.running {
        match (replica, replica::replicating(hp, Some(st))) {
            (None, _) => problems.push("replica is not replicating (not configured)".into()),
            (Some(_), Some((db, r, primary))) => {
                problems.extend(replica::problem(db, r, primary, &reseed(hp.name())))
            }
            (Some(r), None) if r.reconnecting() => problems.push(format!(
                "replication reconnecting to {} (IO thread Connecting, SQL thread running{}): \
                 usual for a few seconds after its primary restarted; run status again",
                r.master_host.as_deref().unwrap_or("its primary"),
                if r.last_io_error.is_empty() {
                    String::new()
                } else {
                    format!("; last: {}", r.last_io_error)
                },
            )),
            (Some(r), None) if !r.running() => problems.push(format!(
                "replication stopped: IO thread {}, SQL thread {}{}{}",
                r.io_running.as_deref().unwrap_or("?"),
                r.sql_running.as_deref().unwrap_or("?"),
                if r.last_io_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.last_io_error)
                },
                if r.last_sql_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.last_sql_error)
                },
            )),
            (Some(_), None) => {}
        }
    }
    if role == Some(DbRole::Primary) && db.read_only == Some(true) {
        problems.push("the primary is read-only".into());
    }
    json!({
        "role": role, "running": db.running, "read_only": db.read_only,
        "gtid_current_pos": db.gtid_current_pos,
        "replication": replica.map(|r| json!({
            "master_host": r.master_host, "io_running": r.io_running, "sql_running": r.sql_running,
            "seconds_behind": r.seconds_behind, "last_io_error": r.last_io_error,
            "last_sql_error": r.last_sql_error, "gtid_io_pos": r.gtid_io_pos,
        })),
    })
}
/// The host's certificates and the days each has left: one expiring within 7 days is
/// a problem, within 30 a warning, one missing or unreadable a warning.
fn certificate_status(
    st: &HostState,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut certificates = Vec::new();
    for (path, not_after) in &st.certs {
        match not_after {
            Some(t) => {
                let days = (t - now) / 86_400.0;
                if days < 7.0 {
                    problems.push(format!("certificate {path} expires in {days:.1} days"));
                } else if days < 30.0 {
                    warnings.push(format!("certificate {path} expires in {days:.0} days"));
                }
                certificates.push(json!({"path": path, "not_after": t, "days_left": (days * 10.0).round() / 10.0}));
            }
            None => warnings.push(format!("certificate {path} is missing or unreadable")),
        }
    }
    certificates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Vec<String> {
        vec!["web-01".into(), "web-02".into()]
    }

    /// What observe's answer holds (parsed as the tool parses it).
    fn view(v: Value) -> HaproxyView {
        serde_json::from_value(v).expect("a view of HAProxy")
    }

    fn www() -> Vec<String> {
        vec!["www".into(), "stats".into()]
    }

    #[test]
    fn a_balancer_serving_the_inventory_with_its_frontends_open_is_healthy() {
        let live = view(json!([
            {"frontend": "www", "status": "OPEN"},
            {"frontend": "stats", "status": "OPEN"},
            {"backend": "web", "server": "web-01", "status": "UP"},
            {"backend": "web", "server": "web-02", "status": "UP 1/3"},
        ]));
        assert!(balancer_problems(Some(&live), &web(), &www()).is_empty());
    }

    #[test]
    fn the_distributions_config_has_no_backend_web_and_no_frontend() {
        // What `status` once printed as `lb-01: backend web:` and exit 0.
        assert_eq!(
            balancer_problems(Some(&view(json!([]))), &web(), &www()),
            [
                "backend web is not there: HAProxy does not run the planned config",
                "frontend www is not there: HAProxy does not run the planned config",
                "frontend stats is not there: HAProxy does not run the planned config",
            ]
        );
    }

    #[test]
    fn missing_extra_and_unhealthy_servers_and_a_closed_frontend_are_each_named() {
        let live = view(json!([
            {"frontend": "www", "status": "STOP"},
            {"frontend": "stats", "status": "OPEN"},
            {"backend": "web", "server": "web-01", "status": "DOWN"},
            {"backend": "web", "server": "web-03", "status": "UP"},
            {"backend": "web", "server": "web-04", "status": "MAINT", "backup": true},
            {"backend": "other", "server": "web-02", "status": "UP"},
        ]));
        let mut servers = web();
        servers.push("web-04".into());
        assert_eq!(
            balancer_problems(Some(&live), &servers, &www()),
            [
                "backend web has no server web-02 (an inventory web server)",
                "backend web/web-01 is DOWN",
                "backend web has server web-03, which is not a web server of the inventory",
                "backend web/web-04 (backup) is MAINT",
                "frontend www is STOP, not OPEN",
            ]
        );
    }

    #[test]
    fn a_silent_runtime_api_is_a_problem() {
        assert_eq!(balancer_problems(None, &web(), &www()).len(), 1);
        let err = view(json!({"error": "connection refused"}));
        assert_eq!(
            balancer_problems(Some(&err), &web(), &www()),
            ["HAProxy's runtime API: connection refused"]
        );
    }

    #[test]
    fn the_planned_config_names_its_frontends() {
        let plan = crate::render::lab_plan();
        let cfg = plan
            .host("lb-01")
            .unwrap()
            .file(paths::HAPROXY_CFG)
            .unwrap();
        assert_eq!(config_frontends(&cfg.content), ["www", "stats"]);
        assert_eq!(plan.backends, web());
    }
}
