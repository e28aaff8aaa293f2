//! The start shared by `diff` and `apply`: render, select hosts (--limit), read the
//! secrets the plan needs, connect to every host and observe it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Result};

use super::render_plan;
pub use crate::address_book::Confirm;
use crate::cli::RemoteArgs;
use crate::database::replica::{self, DivergedReplica};
use crate::diff::{desired_hashes, diff, Changes, Topology};
use crate::error::ErrorKind;
use crate::inventory::{Host, Inventory, Role};
use crate::output::Printer;
use crate::plan::{HostPlan, Plan};
use crate::planfile;
use crate::remote::agent::HostState;
use crate::remote::ssh::SshRemote;
use crate::remote::Remote;
use crate::run::connect;
use crate::run::observe::{self, Observe};
use crate::run::preflight::{self, PortConflict};
use crate::secrets::{placeholders_in, Secrets};

/// Keeps the hosts named by --limit (host names or roles).
pub fn limit(mut plan: Plan, limit: &[String]) -> Result<Plan> {
    let hosts: Vec<&Host> = plan.hosts.iter().map(|h| &h.host).collect();
    check_limit(&hosts, limit)?;
    plan.hosts.retain(|h| selected(&h.host, limit));
    Ok(plan)
}

/// Whether `--limit` selects the host (by name or role; no limit: every host).
fn selected(h: &Host, limit: &[String]) -> bool {
    limit.is_empty()
        || limit
            .iter()
            .any(|l| h.name == *l || Role::parse(l).is_some_and(|r| h.has(r)))
}

/// Every `--limit` names a host or a role, and together they select a host.
fn check_limit(hosts: &[&Host], limit: &[String]) -> Result<()> {
    if limit.is_empty() {
        return Ok(());
    }
    for l in limit {
        let known = hosts.iter().any(|h| h.name == *l) || Role::parse(l).is_some();
        if !known {
            bail!("--limit {l}: no host or role of that name in the inventory");
        }
    }
    if !hosts.iter().any(|h| selected(h, limit)) {
        bail!("--limit {}: selects no host", limit.join(","));
    }
    Ok(())
}

/// The secrets the plan uses: placeholders in files, database accounts, replication.
pub fn secret_names(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for h in &plan.hosts {
        let mut used: Vec<String> = h
            .files
            .iter()
            .flat_map(|f| placeholders_in(&f.content))
            .collect();
        if let Some(db) = &h.db {
            used.extend(db.users.iter().map(|u| u.secret.clone()));
            used.extend(db.primary.iter().map(|p| p.secret.clone()));
        }
        for n in used {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Everything a remote command works with once the hosts are observed.
pub struct Session {
    pub inventory: Inventory,
    pub plan: Plan,
    pub secrets: Secrets,
    pub remotes: Vec<SshRemote>,
    pub observed: BTreeMap<String, HostState>,
    pub changes: Changes,
    /// Ports the stack needs that other processes hold: apply must not start.
    pub conflicts: Vec<PortConflict>,
    /// Replicas that diverged from their primary: apply must not start either.
    pub diverged: Vec<DivergedReplica>,
    /// The load balancers `--limit` left out (not connected until
    /// [`Session::reach_outside_balancers`]).
    outside: Vec<HostPlan>,
}

impl Session {
    pub fn remotes(&self) -> Vec<&dyn Remote> {
        self.remotes.iter().map(|r| r as &dyn Remote).collect()
    }

    /// Connects the load balancers `--limit` left out, so that the run's web servers are
    /// drained and put back at every one; the servers they have UP count as in service.
    pub async fn reach_outside_balancers(
        &mut self,
        args: &RemoteArgs,
        printer: &Arc<Printer>,
    ) -> Result<()> {
        if self.outside.is_empty() {
            return Ok(());
        }
        let lbs = std::mem::take(&mut self.outside);
        let (remotes, up) = crate::run::outside::connect(
            &lbs,
            &self.plan.domain,
            &self.secrets,
            args.parallel,
            args.persist,
            printer,
        )
        .await?;
        self.remotes.extend(remotes);
        self.plan.outside_balancers = lbs;
        self.changes.in_service.extend(up);
        self.changes.in_service.sort();
        self.changes.in_service.dedup();
        Ok(())
    }

    pub async fn close(self) {
        connect::close_all(self.remotes).await;
    }
}

/// The saved plan when the argument is one, and the inventory to read: a saved plan
/// pins the reviewed files; it never chooses its inventory (finding 4).
fn saved_plan(args: &RemoteArgs) -> Result<(Option<planfile::PlanFile>, std::path::PathBuf)> {
    let saved = if planfile::is_plan(&args.inventory) {
        Some(planfile::read(&args.inventory)?)
    } else {
        None
    };
    let inventory_path = match &saved {
        Some(p) => p.inventory_for(&args.inventory, args.plan_inventory.as_deref())?,
        None if args.plan_inventory.is_some() => {
            return Err(crate::error::usage(format!(
                "--inventory is for applying a saved plan; {} is an inventory",
                args.inventory.display()
            )))
        }
        None => args.inventory.clone(),
    };
    Ok((saved, inventory_path))
}

/// The hashes each host's files should have, per host (what a saved plan compares).
fn desired_by_host(
    plan: &Plan,
    secrets: &Secrets,
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    plan.hosts
        .iter()
        .map(|hp| Ok((hp.name().to_string(), desired_hashes(hp, secrets)?)))
        .collect()
}

/// The inventory's hosts that `--limit` selects, to connect to before the plan is
/// rendered.
fn selected_hosts(inventory: &Inventory, limit: &[String], printer: &Printer) -> Vec<Host> {
    let mut early: Vec<Host> = Vec::new();
    early.extend(
        (inventory.hosts.iter())
            .filter(|h| selected(h, limit))
            .cloned(),
    );
    printer.status("Connecting", format!("{} hosts", early.len()));
    early
}

/// Each host's line once diffed: in sync or changes pending.
fn report_hosts(changes: &Changes, printer: &Printer) {
    for hc in &changes.hosts {
        printer.host_done(
            &hc.host,
            if hc.is_empty() {
                "in sync"
            } else {
                "changes pending"
            },
        );
    }
}

/// The plan of the selected hosts (pinned to a saved plan's files), its secrets, and
/// the hosts a `--limit` leaves out whose balancers the run still drains at.
fn prepare(
    inventory: &Inventory,
    args: &RemoteArgs,
    saved: Option<&planfile::PlanFile>,
) -> Result<(Plan, Secrets, Vec<HostPlan>)> {
    let full = render_plan(inventory, args.templates.templates.as_deref())?;
    let mut plan = limit(full.clone(), &args.limit)?;
    let outside = crate::run::outside::left_out(&full, &plan);
    if let Some(saved) = saved {
        saved.pin(&mut plan, &args.inventory)?;
    }
    let secrets = Secrets::load(inventory, &secret_names(&plan))?;
    Ok((plan, secrets, outside))
}

/// Connects, observes and diffs: `how` says whether the witness may stand in for a
/// full observe (apply, diff, plan) or not (rollback needs every release); `confirm`,
/// how an address `--prune-host` takes from this controller's records is confirmed.
pub async fn open(
    args: &RemoteArgs,
    printer: &Arc<Printer>,
    how: Observe,
    confirm: Confirm,
) -> Result<Session> {
    let (saved, inventory_path) = saved_plan(args)?;
    // The connections start as soon as the inventory is read: rendering the plan (the
    // templates, the release archive) and reading the secrets overlap their key exchanges.
    let inventory = Inventory::load(&inventory_path)?;
    inventory.refuse_untested()?;
    if let Some(saved) = &saved {
        let templates = crate::templates::Templates::load(args.templates.templates.as_deref())?;
        saved.check_fresh(
            &inventory,
            &templates.source_hash(),
            args.max_plan_age,
            &args.inventory,
        )?;
    }
    // Each pruned host's address: given, or this controller's own record (never a
    // host's), shown and, where `confirm` says, confirmed before anything connects.
    let prune = parse_prune(&args.prune_host, &inventory)?;
    let prune = crate::address_book::pruned_addresses(&prune, &inventory.path, confirm)?;
    check_limit(&inventory.hosts.iter().collect::<Vec<_>>(), &args.limit)?;
    // (With --prune-host the connections wait for the plan: connect_with_pruned.)
    let early = if prune.is_empty() {
        selected_hosts(&inventory, &args.limit, printer)
    } else {
        Vec::new()
    };
    let connecting = connect::Connecting::start(&early, args.parallel, args.persist, printer);
    let (mut plan, secrets, outside) = match prepare(&inventory, args, saved.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            connecting.abandon().await;
            return Err(e);
        }
    };
    let (remotes, observed) = if prune.is_empty() {
        connect::connect_and_observe(&plan, connecting, args.parallel, printer, &secrets, how)
            .await?
    } else {
        printer.status("Connecting", format!("{} hosts", plan.hosts.len()));
        connect_with_pruned(&mut plan, &prune, &inventory, &secrets, args, printer).await?
    };
    if let Err(e) = live_primary_matches(&plan, &observed) {
        connect::close_all(remotes).await;
        return Err(e);
    }
    if let Some(saved) = &saved {
        let desired = desired_by_host(&plan, &secrets)?;
        if let Err(e) = saved.check_hosts(&observed, &desired) {
            connect::close_all(remotes).await;
            return Err(e);
        }
    }
    let mut changes = diff(&plan, &observed, &secrets)?;
    changes.topology.pruned_hosts = prune.iter().map(|(n, _)| n.clone()).collect();
    report_hosts(&changes, printer);
    let conflicts = preflight::conflicts(&plan, &observed);
    let diverged = replica::diverged_replicas(&plan, &observed, &inventory.path);
    Ok(Session {
        diverged,
        inventory,
        plan,
        secrets,
        remotes,
        observed,
        changes,
        conflicts,
        outside,
    })
}

/// `--prune-host NAME[=ADDRESS]`: hosts that must not be in the inventory.
fn parse_prune(args: &[String], inv: &Inventory) -> Result<Vec<(String, Option<IpAddr>)>> {
    let mut out = Vec::new();
    for a in args {
        let (name, addr) = match a.split_once('=') {
            Some((n, ad)) => {
                let ip: IpAddr = ad.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--prune-host {a}: {ad:?} is not an IP address")
                })?;
                (n.trim().to_string(), Some(ip))
            }
            None => (a.trim().to_string(), None),
        };
        if inv.host(&name).is_some() {
            bail!(
                "--prune-host {name}: {name} is in the inventory; --prune-host is for hosts removed from it \
                 (to take a role off a host, edit its roles)"
            );
        }
        out.push((name, addr));
    }
    Ok(out)
}

/// Adds each pruned host to the plan with no roles (so the diff removes every file its
/// manifest lists and stops their services) and connects to it.
async fn add_pruned(
    plan: &mut Plan,
    remotes: &mut Vec<SshRemote>,
    prune: &[(String, IpAddr)],
    inventory: &Inventory,
    persist: Option<u64>,
    printer: &Arc<Printer>,
) -> Result<()> {
    for &(ref name, address) in prune {
        let host = crate::inventory::Host {
            name: name.clone(),
            address,
            roles: Vec::new(),
            ssh: inventory.ssh.clone(),
            server_id: 0,
        };
        printer.status("Pruning", format!("{name} ({address})"));
        let remote = crate::remote::ssh::connect_with(&host, printer.clone(), persist).await?;
        plan.hosts.push(HostPlan::bare(host));
        remotes.push(remote);
    }
    Ok(())
}

/// Connects to the inventory's hosts and to the hosts being pruned, then observes them
/// all.
async fn connect_with_pruned(
    plan: &mut Plan,
    prune: &[(String, IpAddr)],
    inventory: &Inventory,
    secrets: &Secrets,
    args: &RemoteArgs,
    printer: &Arc<Printer>,
) -> Result<(Vec<SshRemote>, BTreeMap<String, HostState>)> {
    let mut remotes = connect::connect_all(plan, args.parallel, args.persist, printer).await?;
    if let Err(e) = add_pruned(plan, &mut remotes, prune, inventory, args.persist, printer).await {
        connect::close_all(remotes).await;
        return Err(e);
    }
    let refs: Vec<&dyn Remote> = remotes.iter().map(|r| r as &dyn Remote).collect();
    match observe::observe_all(plan, &refs, secrets, args.parallel).await {
        Ok(observed) => Ok((remotes, observed)),
        Err(e) => {
            connect::close_all(remotes).await;
            Err(e)
        }
    }
}

/// `apply` never undoes a failover: when the inventory's db-primary is read-only and
/// replicates from another host, which is writable, stop before changing anything.
fn live_primary_matches(plan: &Plan, observed: &BTreeMap<String, HostState>) -> Result<()> {
    let Some(primary) = plan.db_primary() else {
        return Ok(());
    };
    let Some(st) = observed
        .get(primary.name())
        .and_then(|s| s.db.as_ref())
        .filter(|d| d.running)
    else {
        return Ok(());
    };
    let demoted = st.read_only == Some(true) || st.replica.is_some();
    if !demoted {
        return Ok(());
    }
    let live = plan.hosts.iter().find(|h| {
        h.name() != primary.name()
            && observed
                .get(h.name())
                .and_then(|s| s.db.as_ref())
                .is_some_and(|d| d.running && d.read_only == Some(false) && d.replica.is_none())
    });
    if let Some(live) = live {
        bail!(
            "the live database primary is {} (writable, replicating from nobody), but the inventory names {}: \
             run `foobar-infra db promote {} --write-inventory` (or change the roles in the inventory) before apply",
            live.name(),
            primary.name(),
            live.name()
        );
    }
    Ok(())
}

/// Stops diff, plan and apply when a port the stack needs is held by another process
/// (src/run/preflight.rs) or a replica diverged from its primary
/// (src/database/replica.rs): errors that block apply, not pending changes. Prints the
/// changes all the same (with `--json`: the one document, with `errors`; `apply
/// --json`: an `error` event each) and returns the error naming each host and cause,
/// and for a diverged replica the command that repairs it.
pub fn refuse_blocked(session: &Session, p: &Printer, command: &str) -> Result<()> {
    let (conflicts, diverged) = (&session.conflicts, &session.diverged);
    if conflicts.is_empty() && diverged.is_empty() {
        return Ok(());
    }
    let errors: Vec<serde_json::Value> = (conflicts.iter().map(PortConflict::to_json))
        .chain(diverged.iter().map(DivergedReplica::to_json))
        .collect();
    if p.json && command == "apply" {
        for e in errors {
            p.event(serde_json::json!({"event": "error", "error": e}));
        }
    } else if p.json {
        let mut doc = changes_document(&session.changes, command);
        doc["errors"] = errors.into();
        p.json_line(&doc);
    } else {
        print_changes(&session.changes, p, command);
    }
    let mut lines: Vec<String> = (conflicts.iter().map(PortConflict::message))
        .chain(diverged.iter().map(DivergedReplica::message))
        .collect();
    if command == "apply" {
        lines.push("nothing was changed on any host".into());
    }
    let (kind, host) = match (conflicts.first(), diverged.first()) {
        (Some(c), _) => (ErrorKind::PortHeld, c.host.as_str()),
        (None, Some(d)) => (ErrorKind::Database, d.host.as_str()),
        (None, None) => unreachable!("returned above"),
    };
    Err(crate::error::tag(
        anyhow::anyhow!("{}", lines.join("\n")),
        kind,
        Some(host),
    ))
}

/// The JSON document of `diff`, `plan` and `apply --dry-run`.
fn changes_document(changes: &Changes, command: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": 1, "command": command, "in_sync": changes.is_empty(),
        "topology": changes.topology, "hosts": changes.hosts,
    })
}

/// Prints the changes as unified diffs (or one JSON document); true when any.
pub fn print_changes(changes: &Changes, p: &Printer, command: &str) -> bool {
    let pending = !changes.is_empty();
    if p.json {
        p.json_line(&changes_document(changes, command));
        return pending;
    }
    let t = &changes.topology;
    if !t.is_empty() {
        print_topology(t, p);
    }
    let mut files = 0;
    let mut actions = 0;
    for hc in changes.hosts.iter().filter(|h| !h.is_empty()) {
        p.out(p.bold(&format!("== {}", hc.host)));
        for pkg in &hc.install {
            p.out(format!("  install package {pkg}"));
        }
        for user in &hc.create_users {
            p.out(format!("  create system user {user}"));
        }
        if let Some(rel) = &hc.release {
            actions += 1;
            p.out(format!(
                "  release {} -> {}{} (rolling: drained from the load balancers while it restarts)",
                rel.from.as_deref().unwrap_or("none"),
                rel.to,
                if rel.upload { ", upload" } else { "" }
            ));
        }
        if hc.manifest_only() {
            p.out(format!(
                "  record the managed-file manifest ({} files, already as planned)",
                hc.manifest.len()
            ));
        }
        for f in &hc.files {
            files += 1;
            p.out(format!("  {:?} {} ({})", f.kind, f.path, f.service).to_lowercase());
            for line in f.diff.lines() {
                p.out(p.paint_diff_line(line));
            }
        }
        for s in &hc.services {
            actions += 1;
            p.out(format!(
                "  {} {} ({})",
                s.service,
                s.action.as_str(),
                s.reason
            ));
        }
        for b in &hc.boot {
            actions += 1;
            p.out(format!("  {}", b.describe()));
        }
        if let Some(db) = &hc.db {
            actions += 1;
            p.out(format!("  {}", db.describe()));
        }
    }
    if pending {
        let hosts = changes.hosts.iter().filter(|h| !h.is_empty()).count();
        p.status(
            "Pending",
            format!("{files} file changes and {actions} service actions on {hosts} hosts"),
        );
    } else {
        p.status("In sync", format!("{} hosts", changes.hosts.len()));
    }
    pending
}

/// The `== topology` section of a diff: hosts, backends, services and replicas that
/// join or leave, and the order the apply takes.
fn print_topology(t: &Topology, p: &Printer) {
    p.out(p.bold("== topology"));
    for h in &t.new_hosts {
        p.out(format!("  + host {h} joins (never applied to before)"));
    }
    for h in &t.pruned_hosts {
        p.out(format!(
            "  - host {h} leaves (--prune-host): its managed files removed, its services stopped"
        ));
    }
    for b in &t.backends_added {
        p.out(format!(
            "  + backend {b} (added to the load balancers once it is ready)"
        ));
    }
    for b in &t.backends_removed {
        p.out(format!("  - backend {b} (drained first, then removed)"));
    }
    for (h, svc) in &t.services_stopped {
        p.out(format!("  - {svc} stops on {h} (its role left the host)"));
    }
    for r in &t.replicas_seeded {
        p.out(format!("  + replica {r} seeded from the primary"));
    }
    for r in &t.replicas_checked {
        p.out(format!(
            "  + replica {r}: its database server starts, then it is seeded from the primary unless it already replicates"
        ));
    }
    for r in &t.replicas_removed {
        p.out(format!(
            "  - replica {r} leaves (replication stopped and reset first)"
        ));
    }
    p.out("  order:");
    for (i, step) in t.order().iter().enumerate() {
        p.out(format!("    {}. {step}", i + 1));
    }
}
