//! A replica's state as desired state: `read_only` ON, replicating from the inventory's
//! primary by GTID, both threads running. [`assess`] decides from what observe saw
//! (pure): healthy, reconnecting by itself, to be put right by apply (only what is safe:
//! `read_only` back ON, a thread started again after it was stopped by hand or on a
//! transient error, the source re-pointed at the same primary with the GTID position
//! kept), or diverged from its primary (an error replication cannot go past, or a
//! transaction of its own): then `diff` and `apply` stop, naming the error and
//! `db reseed`, which copies the primary into the replica again.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::output::Printer;
use crate::plan::{DbPlan, DbRole, HostPlan, Plan, PrimaryRef};
use crate::protocol;
use crate::protocol::database::{DbReplicaRepair, DbWaitReplica, ThreadStop};
use crate::remote::agent::{DbState, HostState, ReplicaState};
use crate::remote::Remote;
use crate::secrets::Secrets;

/// SQL-thread errors after which starting the thread again is safe: it stopped by
/// hand (0) or on something that passes (lock wait timeout, deadlock, a query
/// interrupted or its connection killed, disk full once there is space). Any other
/// error means the replica's data differs from what the primary's events expect.
const TRANSIENT_SQL_ERRORS: &[u32] = &[0, 1021, 1205, 1213, 1317, 1927];

/// IO-thread errors that no restart gets past: 1236, the primary does not have the
/// position the replica asks for (it has transactions of its own, or the primary
/// purged the binary logs it needs).
const DIVERGED_IO_ERRORS: &[u32] = &[1236];

/// Seconds `status` gives a replica whose IO thread is reconnecting before calling it a
/// problem: it retries every MASTER_CONNECT_RETRY = 5 s, so after its primary restarted
/// (an apply returns once the restarted server answers) it is back within one retry.
pub const RECONNECT_GRACE_S: u64 = 8;

/// One thing apply puts right on a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "repair")]
pub enum ReplicaRepair {
    /// `read_only` is OFF: back ON.
    ReadOnly,
    /// The IO thread stopped (it only fetches the primary's events): started again.
    StartIo { errno: u32, error: String },
    /// The SQL thread stopped by hand or on a transient error: started again.
    StartSql { errno: u32, error: String },
    /// It replicates from the primary's host, but not as planned (port, user, or not
    /// by `current_pos` GTID): pointed at the primary again, GTID position kept.
    Source { seen: String },
}

impl ReplicaRepair {
    pub fn describe(&self) -> String {
        let thread = |name: &str, errno: u32, error: &str| {
            if errno == 0 {
                format!("start the {name} thread (stopped, no error)")
            } else {
                format!(
                    "start the {name} thread (stopped on error {errno}: {})",
                    short(error)
                )
            }
        };
        match self {
            ReplicaRepair::ReadOnly => {
                "read_only back ON (it is OFF: a write there breaks replication)".into()
            }
            ReplicaRepair::StartIo { errno, error } => thread("IO", *errno, error),
            ReplicaRepair::StartSql { errno, error } => thread("SQL", *errno, error),
            ReplicaRepair::Source { seen } => {
                format!(
                    "replicate from the primary as planned, by GTID (now {seen}; position kept)"
                )
            }
        }
    }
}

/// Why a replica cannot be put right in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The server's error number (0: a transaction of its own, seen by GTID).
    pub errno: u32,
    /// What happened, in the server's words where it has some.
    pub error: String,
}

impl Divergence {
    /// "SQL thread stopped on error 1950 (GTID out of order): An attempt ...".
    pub fn describe(&self) -> String {
        self.error.clone()
    }
}

/// What a replica needs, from what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// The IO thread is connecting to the primary by itself; nothing to do but wait.
    Reconnecting {
        errno: u32,
        error: String,
    },
    /// Safe to put right in place (apply does).
    Repair(Vec<ReplicaRepair>),
    /// Only a new copy of the primary helps (`db reseed`).
    Diverged(Divergence),
}

/// A GTID list (`0-1-14,1-2-3`) as (domain, server id, sequence number) triples.
fn gtids(list: &str) -> Vec<(u32, u64, u64)> {
    list.split(',')
        .filter_map(|g| {
            let mut parts = g.trim().splitn(3, '-');
            Some((
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// A transaction the replica wrote itself (its own server id in its GTID position)
/// that the primary's binary log does not have: a write on the replica. A server that
/// was the primary before a failover has its own GTIDs too, but the new primary has
/// them as well.
fn own_transaction(st: &DbState, primary: &DbState) -> Option<String> {
    let own = st.server_id?;
    let theirs = gtids(primary.gtid_binlog_pos.as_deref()?);
    gtids(st.gtid_current_pos.as_deref()?)
        .into_iter()
        .filter(|&(_, server, _)| server == own)
        .find(
            |&(domain, server, seq)| match theirs.iter().find(|(d, _, _)| *d == domain) {
                None => true,
                Some(&(_, s, n)) => n < seq || (n == seq && s != server),
            },
        )
        .map(|(d, s, n)| format!("{d}-{s}-{n}"))
}

/// What the server's error number means, for the message.
fn known_error(errno: u32) -> Option<&'static str> {
    Some(match errno {
        1062 => "duplicate key: a row the primary writes is already there",
        1032 => "row not found: a row the primary changes is missing",
        1950 => "GTID out of order: the replica has a transaction of its own",
        1236 => "the primary does not have the replica's position",
        _ => return None,
    })
}

/// A server message kept short (a failed statement can be quoted in full).
fn short(s: &str) -> String {
    const MAX: usize = 300;
    let s = s.trim();
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn diverged(thread: &str, errno: u32, error: &str) -> Verdict {
    let what = known_error(errno).map_or(String::new(), |k| format!(" ({k})"));
    Verdict::Diverged(Divergence {
        errno,
        error: format!(
            "{thread} thread stopped on error {errno}{what}: {}",
            short(error)
        ),
    })
}

/// Decides what a running replica that replicates from its primary's host needs. Pure.
/// `primary_state`: the primary as observed in the same run, when it was (without it,
/// a transaction of the replica's own is found only once replication stops on it).
pub fn assess(
    st: &DbState,
    r: &ReplicaState,
    primary: &PrimaryRef,
    primary_state: Option<&DbState>,
) -> Verdict {
    // Unknown (not reported) is not a change.
    let io = r.io_running.as_deref().unwrap_or("Yes");
    let sql = r.sql_running.as_deref().unwrap_or("Yes");
    // The server's own error first: it is what the user will look up.
    if sql == "No" && !TRANSIENT_SQL_ERRORS.contains(&r.last_sql_errno) {
        return diverged("SQL", r.last_sql_errno, &r.last_sql_error);
    }
    if io == "No" && DIVERGED_IO_ERRORS.contains(&r.last_io_errno) {
        return diverged("IO", r.last_io_errno, &r.last_io_error);
    }
    if let Some(gtid) = primary_state
        .filter(|p| p.running)
        .and_then(|p| own_transaction(st, p))
    {
        return Verdict::Diverged(Divergence {
            errno: 0,
            error: format!(
                "it has a transaction of its own, GTID {gtid}, that {} does not have (a write on the replica)",
                primary.name
            ),
        });
    }
    let mut repairs = Vec::new();
    if st.read_only == Some(false) {
        repairs.push(ReplicaRepair::ReadOnly);
    }
    let port = r.master_port.filter(|p| *p != primary.port);
    let user = r.master_user.as_ref().filter(|u| **u != primary.user);
    let gtid = r.using_gtid.as_ref().filter(|g| *g != "Current_Pos");
    if port.is_some() || user.is_some() || gtid.is_some() {
        // Re-pointing starts both threads.
        repairs.push(ReplicaRepair::Source {
            seen: format!(
                "port {}, user {}, GTID {}",
                r.master_port.map_or("?".into(), |p| p.to_string()),
                r.master_user.as_deref().unwrap_or("?"),
                r.using_gtid.as_deref().unwrap_or("?")
            ),
        });
    } else {
        if io == "No" {
            repairs.push(ReplicaRepair::StartIo {
                errno: r.last_io_errno,
                error: r.last_io_error.clone(),
            });
        }
        if sql == "No" {
            repairs.push(ReplicaRepair::StartSql {
                errno: r.last_sql_errno,
                error: r.last_sql_error.clone(),
            });
        }
    }
    if !repairs.is_empty() {
        Verdict::Repair(repairs)
    } else if io != "Yes" {
        Verdict::Reconnecting {
            errno: r.last_io_errno,
            error: r.last_io_error.clone(),
        }
    } else {
        Verdict::Healthy
    }
}

/// A replica of the plan that diverged from its primary: `diff` and `apply` stop on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergedReplica {
    pub host: String,
    pub primary: String,
    pub divergence: Divergence,
    /// The command that repairs it.
    pub repair: String,
}

impl DivergedReplica {
    pub fn message(&self) -> String {
        format!(
            "{}: the replica has diverged from {}: {}; apply cannot repair that in place: \
             re-seed it from {} (its database replaced by a copy of the primary's) with `{}`",
            self.host, self.primary, self.divergence.error, self.primary, self.repair
        )
    }

    /// The error as `--json` carries it.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "replica-diverged", "host": self.host, "primary": self.primary,
            "errno": self.divergence.errno, "error": self.divergence.error,
            "repair": self.repair, "message": self.message(),
        })
    }
}

/// The command line that re-seeds `host`.
pub fn reseed_command(inventory: &std::path::Path, host: &str) -> String {
    format!("foobar-infra db reseed {} {host}", inventory.display())
}

/// Every replica of the plan that diverged from its primary (both as observed).
pub fn diverged_replicas(
    plan: &Plan,
    observed: &BTreeMap<String, HostState>,
    inventory: &std::path::Path,
) -> Vec<DivergedReplica> {
    let mut out = Vec::new();
    for hp in &plan.hosts {
        let Some((st, r, pref)) = replicating(hp, observed.get(hp.name())) else {
            continue;
        };
        let primary_state = observed.get(&pref.name).and_then(|s| s.db.as_ref());
        if let Verdict::Diverged(d) = assess(st, r, pref, primary_state) {
            out.push(DivergedReplica {
                host: hp.name().to_string(),
                primary: pref.name.clone(),
                divergence: d,
                repair: reseed_command(inventory, hp.name()),
            });
        }
    }
    out
}

/// A planned replica whose server runs and replicates from its primary's host, with
/// its state, replication status and primary.
pub fn replicating<'a>(
    hp: &'a HostPlan,
    state: Option<&'a HostState>,
) -> Option<(&'a DbState, &'a ReplicaState, &'a PrimaryRef)> {
    let db = hp.db.as_ref()?;
    let st = state?.db.as_ref()?;
    let (r, pref) = replica_of(db, st)?;
    Some((st, r, pref))
}

fn replica_of<'a>(db: &'a DbPlan, st: &'a DbState) -> Option<(&'a ReplicaState, &'a PrimaryRef)> {
    let pref = db
        .primary
        .as_ref()
        .filter(|_| db.role == DbRole::Replica && st.running)?;
    let r = st
        .replica
        .as_ref()
        .filter(|r| r.master_host.as_deref() == Some(pref.address.as_str()))?;
    Some((r, pref))
}

/// How a replica diverged, from its own state alone (an error replication stopped on).
pub fn divergence(db: &DbPlan, st: &DbState) -> Option<Divergence> {
    let (r, pref) = replica_of(db, st)?;
    match assess(st, r, pref, None) {
        Verdict::Diverged(d) => Some(d),
        _ => None,
    }
}

/// Puts a replica right (the repairs [`assess`] chose), then judges it again from the
/// agent's answer: an error names what is still wrong.
pub async fn repair(
    r: &dyn Remote,
    db: &DbPlan,
    repairs: &[ReplicaRepair],
    secrets: &Secrets,
    printer: &Printer,
) -> Result<()> {
    let pref = db.primary.as_ref().context("replica without primary")?;
    let mut req = DbReplicaRepair {
        timeout_s: 30,
        ..DbReplicaRepair::default()
    };
    for rep in repairs {
        match rep {
            ReplicaRepair::ReadOnly => req.read_only = Some(true),
            ReplicaRepair::StartIo { errno, .. } => {
                req.start_io = Some(ThreadStop { errno: *errno })
            }
            ReplicaRepair::StartSql { errno, .. } => {
                req.start_sql = Some(ThreadStop { errno: *errno })
            }
            ReplicaRepair::Source { .. } => {
                req.source = Some(crate::database::source(pref, &pref.address, secrets)?)
            }
        }
    }
    let what: Vec<String> = repairs.iter().map(ReplicaRepair::describe).collect();
    printer.status("Repairing", format!("{}: {}", r.name(), what.join("; ")));
    let answer = protocol::call(r, &req)
        .await
        .with_context(|| format!("{}: repairing the replica", r.name()))?;
    for step in &answer.done {
        printer.detail("Database", format!("{}: {step}", r.name()));
    }
    let after: ReplicaState = answer
        .replica
        .with_context(|| format!("{}: no replication status after the repair", r.name()))?;
    let st = DbState {
        running: true,
        read_only: Some(answer.read_only),
        ..DbState::default()
    };
    match assess(&st, &after, pref, None) {
        Verdict::Healthy => Ok(()),
        Verdict::Diverged(d) => bail!(
            "{}: the replica has diverged from {} (found while repairing it): {}; re-seed it with `foobar-infra db reseed INVENTORY {}`",
            r.name(),
            pref.name,
            d.error,
            r.name()
        ),
        Verdict::Reconnecting { errno, error } => bail!(
            "{}: replication did not come back within 30 s: the IO thread is still connecting to {} (error {errno}: {})",
            r.name(),
            pref.name,
            short(&error)
        ),
        Verdict::Repair(left) => bail!(
            "{}: the replica is still not as planned after the repair: {}",
            r.name(),
            left.iter()
                .map(ReplicaRepair::describe)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// `status`'s grace period: a replica whose IO thread is reconnecting by itself gets up
/// to [`RECONNECT_GRACE_S`] to be back, then its replication status is read again.
pub async fn settle(hp: &HostPlan, r: &dyn Remote, state: &mut HostState) {
    let reconnecting = replicating(hp, Some(state)).is_some_and(|(st, rs, pref)| {
        matches!(assess(st, rs, pref, None), Verdict::Reconnecting { .. })
    });
    if !reconnecting {
        return;
    }
    let req = DbWaitReplica {
        timeout_s: RECONNECT_GRACE_S,
    };
    let back: Option<ReplicaState> = protocol::call(r, &req).await.ok().and_then(|a| a.replica);
    if let (Some(back), Some(db)) = (back, state.db.as_mut()) {
        db.replica = Some(back);
    }
}

/// `status`'s words for a running replica that replicates from its primary's host:
/// None when healthy (`read_only` OFF, which apply puts back, shows as drift).
/// `reseed`: the command that re-seeds it.
pub fn problem(
    st: &DbState,
    r: &ReplicaState,
    primary: &PrimaryRef,
    reseed: &str,
) -> Option<String> {
    match assess(st, r, primary, None) {
        Verdict::Healthy => None,
        Verdict::Diverged(d) => Some(format!(
            "the replica has diverged from {}: {}; re-seed it with `{reseed}`",
            primary.name, d.error
        )),
        Verdict::Reconnecting { errno, error } => Some(format!(
            "replication is reconnecting to {} for more than {RECONNECT_GRACE_S} s (error {errno}: {})",
            primary.name,
            short(&error)
        )),
        Verdict::Repair(repairs) => {
            let stopped: Vec<String> = repairs
                .iter()
                .filter(|x| !matches!(x, ReplicaRepair::ReadOnly))
                .map(ReplicaRepair::describe)
                .collect();
            (!stopped.is_empty()).then(|| {
                format!(
                    "replication stopped: IO thread {}, SQL thread {}; apply will {}",
                    r.io_running.as_deref().unwrap_or("?"),
                    r.sql_running.as_deref().unwrap_or("?"),
                    stopped.join("; ")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests;
