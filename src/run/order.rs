//! The order in which hosts commit: the ordering rules of a run, stated once.

use super::Work;
use crate::diff::{Changes, HostChanges};
use crate::inventory::Role;
use crate::plan::{Service, ServiceAction};

/// The staged hosts, grouped by when they commit.
pub(super) struct CommitOrder<'a> {
    /// Hosts that only reload: all at once (`--parallel` at a time), first.
    pub together: Vec<Work<'a>>,
    /// Hosts whose database or application restarts: one at a time, in this order,
    /// each web server drained at every load balancer meanwhile (src/run/rolling.rs).
    pub rolling: Vec<Work<'a>>,
    /// Load balancers that gain a web server: last, once the new servers are ready.
    pub deferred: Vec<Work<'a>>,
}

/// The ordering rules: a load balancer that gains a web server reloads last (the
/// server must be ready first); a host whose database or application restarts (not a
/// reload) goes one at a time, database replicas first and the primary last; every
/// other host goes together.
pub(super) fn commit_order<'a>(changes: &Changes, staged: &[Work<'a>]) -> CommitOrder<'a> {
    let adds = !changes.topology.backends_added.is_empty();
    let (deferred, now): (Vec<Work>, Vec<Work>) = staged
        .iter()
        .copied()
        .partition(|(hp, hc, _)| adds && hp.host.has(Role::Lb) && !hc.files_unchanged());
    let (mut rolling, together): (Vec<Work>, Vec<Work>) =
        now.into_iter().partition(|(_, hc, _)| restarts(hc));
    rolling.sort_by_key(|(hp, _, _)| (hp.host.has(Role::DbPrimary), !hp.host.has(Role::DbReplica)));
    CommitOrder {
        together,
        rolling,
        deferred,
    }
}

/// The host's database or application restarts (or starts, or stops).
fn restarts(hc: &HostChanges) -> bool {
    hc.services.iter().any(|s| {
        (s.service.is_database() || s.service == Service::App) && s.action != ServiceAction::Reload
    })
}
