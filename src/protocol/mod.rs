//! The agent protocol, typed: one request type and one answer type per operation of the
//! agent (src/agent/*.py, its `OPS` table), the [`Operation`] trait that ties them to the
//! op's name, and the typed calls ([`call`], [`call_fresh`], [`call_checked`]) that every
//! remote step goes through. Each request type also describes its own [`Shape`]; the
//! shapes of all requests are written to `src/agent/foobar_agent/shapes.py` (generated, checked by a
//! test) and the agent refuses any request that does not fit its op's shape, so both
//! sides read the protocol from these types.
//!
//! A request travels as one JSON object, `{"op": NAME, ...fields}`; an answer is
//! `{"ok": true, ...fields}` or `{"ok": false, "error": {...}}`
//! ([`crate::remote::agent::AgentError`]).

#[macro_use]
pub mod shape;
pub mod counters;
pub mod database;
pub mod haproxy;
pub mod kept;
pub mod release;
pub mod run;

#[cfg(test)]
mod roundtrip_tests;

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

use crate::remote::agent::{self, CheckedAnswer};
use crate::remote::{Check, Remote};

pub use shape::Shape;

/// One agent operation: its request (this type) and its answer.
pub trait Operation: Serialize + DeserializeOwned + Shape {
    /// The op's name in the agent's `OPS` table.
    const OP: &'static str;
    /// What the agent answers when the op succeeds.
    type Answer: Serialize + DeserializeOwned;
}

/// The request on the wire: the op's name, then the request's own fields.
#[derive(Serialize)]
struct Envelope<'a, R> {
    op: &'static str,
    #[serde(flatten)]
    request: &'a R,
}

/// The JSON object sent for `request`: `{"op": NAME, ...}`.
pub fn to_value<R: Operation>(request: &R) -> Result<serde_json::Value> {
    serde_json::to_value(Envelope { op: R::OP, request })
        .with_context(|| format!("encoding the agent request {}", R::OP))
}

fn answer_of<R: Operation>(host: &str, v: serde_json::Value) -> Result<R::Answer> {
    serde_json::from_value(v).with_context(|| format!("{host}: reading the answer to {}", R::OP))
}

/// Runs one operation on a host and returns its typed answer, or the agent's error
/// ([`crate::remote::agent::AgentError`]) inside the anyhow chain.
pub async fn call<R: Operation>(remote: &dyn Remote, request: &R) -> Result<R::Answer> {
    let v = agent::call(remote, R::OP, to_value(request)?).await?;
    answer_of::<R>(remote.name(), v)
}

/// [`call`] over a new connection of its own ([`Remote::exec_fresh`]).
pub async fn call_fresh<R: Operation>(remote: &dyn Remote, request: &R) -> Result<R::Answer> {
    let v = agent::call_fresh(remote, R::OP, to_value(request)?).await?;
    answer_of::<R>(remote.name(), v)
}

/// What [`call_checked`] got: the check's own line, or the agent's typed answer.
pub enum Checked<A> {
    Passed(Vec<u8>),
    Answer(A),
}

/// [`call`] behind a check ([`Remote::agent_checked`]).
pub async fn call_checked<R: Operation>(
    remote: &dyn Remote,
    request: &R,
    check: &Check,
) -> Result<Checked<R::Answer>> {
    Ok(
        match agent::call_checked(remote, R::OP, to_value(request)?, check).await? {
            CheckedAnswer::Passed(line) => Checked::Passed(line),
            CheckedAnswer::Answer(v) => Checked::Answer(answer_of::<R>(remote.name(), v)?),
        },
    )
}

/// One row of [`OPERATIONS`]: an op's name, its request's shape, and what it does.
pub struct OperationInfo {
    pub op: &'static str,
    pub request: fn() -> serde_json::Value,
    pub answer: fn() -> &'static str,
    pub summary: &'static str,
}

macro_rules! operations {
    ($($t:ty => $summary:literal),* $(,)?) => {
        /// Every operation of the agent, in the order DESIGN.md lists them.
        pub const OPERATIONS: &[OperationInfo] = &[$(OperationInfo {
            op: <$t as Operation>::OP,
            request: <$t as Shape>::shape,
            answer: std::any::type_name::<<$t as Operation>::Answer>,
            summary: $summary,
        }),*];
    };
}

operations! {
    run::Observe => "reads the host's state: files, services, packages, lock, manifest, database, release, balancer, certificates, listeners",
    run::Stage => "takes the host's lock, checks the observed hashes, installs packages, writes the new files beside the live ones and validates them",
    run::Commit => "backs up, swaps the staged files in, runs the service actions with their checks; restores everything on a failure",
    run::Abort => "removes a run's staged files and frees its lock",
    run::Rollback => "puts back the files a committed run replaced and reloads their services",
    run::FirewallConfirm => "over a fresh connection: cancels the anti-lockout guard of a new firewall",
    run::FirewallGuard => "whether the anti-lockout guard is pending or has fired",
    database::DbPrimary => "converges the primary: database, schema tables, accounts and grants (writes only what differs)",
    database::DbSeedPrepare => "makes a replica ready for a fresh copy of its primary",
    database::DbReplicaStart => "points a replica at its primary by GTID and waits until replication runs",
    database::DbReplicaPassword => "a replica logs in to its primary with a new replication password",
    database::DbReplicaRemove => "replication stopped and forgotten on a host that stops being a replica",
    database::DbWaitReplica => "waits (bounded) until replication runs again",
    database::DbReplicaRepair => "puts right on a replica what is safe to put right, then waits for it",
    database::DbFence => "makes the old primary read-only and answers its binary log position",
    database::DbCatchUp => "waits (bounded) until a replica has applied a GTID position",
    database::DbPromote => "a replica becomes the primary (replication forgotten, writable)",
    database::DbRestoreCheck => "reads what a restore needs to know first (version, GTID, tables, leftovers)",
    database::DbRestorePrepare => "creates the scratch database a backup loads into",
    database::DbRestoreSwap => "one RENAME TABLE moves the restored tables in and the live ones out",
    database::DbRestoreAbort => "drops a failed restore's scratch database",
    release::ReleaseUpload => "unpacks a release into ROOT/releases/ID unless it is there",
    release::ReleaseSwitch => "points ROOT/current at a release, restarts the application, checks its health",
    release::HaproxyServer => "sets a backend server's state on a load balancer (drain, ready, maint)",
    release::History => "the host's last apply records",
    counters::HaproxyCounters => "a load balancer's per-server counters of one backend (requests, 5xx, connection and response errors, response time)",
}

/// The text of `src/agent/foobar_agent/shapes.py`: every request's shape, by op.
pub fn shapes_python() -> String {
    // One op a line; JSON of strings, lists and objects only is also a Python literal.
    let mut ops: Vec<&OperationInfo> = OPERATIONS.iter().collect();
    ops.sort_by_key(|o| o.op);
    let lines: Vec<String> = ops
        .iter()
        .map(|o| format!("    \"{}\": {},", o.op, (o.request)()))
        .collect();
    let body = format!("{{\n{}\n}}", lines.join("\n"));
    format!(
        "\"\"\"Each op's request fields and their shapes (check.py checks requests against\n\
         them). GENERATED from the request types of src/protocol/*.rs: do not edit (a test\n\
         compares it; FOOBAR_WRITE_SHAPES=1 cargo test --lib protocol rewrites it).\"\"\"\n\
         \n\
         REQUEST_SHAPES = {body}\n"
    )
}

/// The protocol section of docs/DESIGN.md: every operation with its request and answer.
pub fn design_table() -> String {
    let mut out = String::from(
        "| op | what it does | request fields | answer |\n| --- | --- | --- | --- |\n",
    );
    for o in OPERATIONS {
        let fields = match (o.request)() {
            serde_json::Value::Object(m) => m
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        let answer = (o.answer)().rsplit("::").next().unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | {} | {} | `{answer}` |\n",
            o.op,
            o.summary,
            if fields.is_empty() { "(none)" } else { &fields }
        ));
    }
    out
}
