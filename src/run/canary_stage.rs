//! A run's canary stage (issue 22): which web servers go first (the first N, in the
//! inventory's order, of those whose files or release change), whether the others'
//! files wait for the verdict, and undoing everything the run did when the verdict
//! stops it. Or why there is none: skipped (the inventory's `rollout:` covers every
//! changing server) or refused (`--canary N` does). The judgement is src/run/canary.rs.

use anyhow::Result;
use serde_json::json;

use super::balancer::set_backend_state;
use super::canary::Canary;
use super::commit::commit_all;
use super::order::commit_order;
use super::rollback::{abort, rollback};
use super::rollout::Releases;
use super::rotation::Rotation;
use super::{Run, Work};
use crate::diff::{Changes, HostChanges};
use crate::inventory::Role;
use crate::plan::Plan;
use crate::protocol::release::ServerState;

/// What a run does about a canary.
#[derive(Debug, PartialEq)]
pub(super) enum Decision {
    /// No canary asked for, or no web server changes.
    None,
    Stage(Stage),
    /// The inventory's canary covers every changing web server: the run goes on
    /// without one, saying why.
    Skip(String),
    /// `--canary N` covers every changing web server: refused before any change.
    Refuse(String),
}

/// The canary stage of a run.
#[derive(Debug, PartialEq)]
pub(super) struct Stage {
    /// The web servers that change first and are watched.
    pub names: Vec<String>,
    /// The other web servers whose files wait, staged, for the verdict (none when the
    /// stage covers the release only: `files_everywhere` says why).
    pub held: Vec<String>,
    pub files_everywhere: Option<String>,
}

/// The web servers whose files or release change, in the inventory's order.
fn changing_web_servers<'p>(plan: &'p Plan, changes: &Changes) -> Vec<&'p str> {
    let changes_of = |name| changes.host(name).filter(|hc| !hc.is_empty());
    (plan.hosts.iter())
        .filter(|hp| hp.host.has(Role::Web))
        .filter(|hp| changes_of(hp.name()).is_some_and(touches_web))
        .map(|hp| hp.name())
        .collect()
}

fn touches_web(hc: &HostChanges) -> bool {
    !hc.files_unchanged() || hc.release.is_some()
}

/// Why the others' files cannot wait for the verdict (the stage then covers the
/// release only), if so.
fn files_must_go_everywhere(changes: &Changes, web: &[&str], rotation: bool) -> Option<String> {
    let hc = |name: &str| changes.host(name);
    let database = web.iter().find(|w| {
        hc(w).is_some_and(|hc| {
            hc.db.is_some() || hc.services.iter().any(|s| s.service.is_database())
        })
    });
    if let Some(w) = database {
        return Some(format!(
            "the database on {w} changes (database restarts keep their order: replicas first)"
        ));
    }
    let t = &changes.topology;
    if !t.backends_added.is_empty() || !t.backends_removed.is_empty() {
        return Some("the load balancers' pool of web servers changes in this run".into());
    }
    if let Some(w) = web
        .iter()
        .find(|w| !changes.in_service.iter().any(|s| s == *w))
    {
        return Some(format!("{w} is not in service at the load balancers yet"));
    }
    rotation.then(|| "database passwords rotate in this run".into())
}

/// The canary stage of this run, none, or why it is skipped or refused.
pub(super) fn decide(plan: &Plan, changes: &Changes, rotation: bool) -> Decision {
    let Some(canary) = plan.canary.as_ref() else {
        return Decision::None;
    };
    let n = canary.limits.canary;
    let web = changing_web_servers(plan, changes);
    if web.is_empty() {
        return Decision::None;
    }
    if let Some(why) = covers_all(canary, &web) {
        return why;
    }
    let Some(reason) = files_must_go_everywhere(changes, &web, rotation) else {
        return Decision::Stage(Stage {
            names: web[..n].iter().map(|s| s.to_string()).collect(),
            held: web[n..].iter().map(|s| s.to_string()).collect(),
            files_everywhere: None,
        });
    };
    // The release alone, on the web servers that switch.
    let switching: Vec<&str> = (web.iter().copied())
        .filter(|w| changes.host(w).is_some_and(|hc| hc.release.is_some()))
        .collect();
    if switching.len() <= n {
        return Decision::Skip(format!(
            "the canary stage is skipped: {reason}, so the files go to every web server at once, \
             and the release switches on {} web server(s), not more than the canary's {n}",
            switching.len()
        ));
    }
    Decision::Stage(Stage {
        names: switching[..n].iter().map(|s| s.to_string()).collect(),
        held: Vec::new(),
        files_everywhere: Some(reason),
    })
}

/// Skip or Refuse when the canary count covers every web server that changes.
fn covers_all(canary: &Canary, web: &[&str]) -> Option<Decision> {
    let n = canary.limits.canary;
    if web.len() > n {
        return None;
    }
    let source = if canary.explicit {
        format!("--canary {n}")
    } else {
        format!("rollout.canary {n}")
    };
    let what = format!(
        "{source} covers every web server that changes in this run ({} of them: {}): none would \
         stay on the old version to compare with",
        web.len(),
        web.join(", ")
    );
    Some(if !canary.explicit {
        Decision::Skip(format!("the canary stage is skipped: {what}"))
    } else if web.len() >= 2 {
        Decision::Refuse(format!(
            "{what}; pass --canary {} or fewer, or --no-canary",
            web.len() - 1
        ))
    } else {
        Decision::Refuse(format!(
            "{what}; pass --no-canary (a canary needs at least 2 changing web servers)"
        ))
    })
}

/// The stage `apply` runs with, after saying why there is none (Skip) or refusing
/// (Refuse: an error before any change).
pub(super) fn choose(run: &Run<'_>, rotation: bool) -> Result<Option<Stage>> {
    match decide(run.plan, run.changes, rotation) {
        Decision::None => Ok(None),
        // The command line asked for what this run cannot do: exit 64.
        Decision::Refuse(msg) => Err(crate::error::usage(msg)),
        Decision::Skip(msg) => {
            run.printer.status("Canary", &msg);
            run.printer
                .event(json!({"event": "canary-skipped", "message": msg}));
            Ok(None)
        }
        Decision::Stage(stage) => {
            if let Some(why) = &stage.files_everywhere {
                let msg = format!(
                    "the canary stage covers the release only: {why}, so the files go to every \
                     web server first"
                );
                run.printer.status("Canary", &msg);
                run.printer
                    .event(json!({"event": "canary-release-only", "message": msg}));
            }
            Ok(Some(stage))
        }
    }
}

/// What the run committed before the verdict, to undo when it stops the rollout.
pub(super) struct Before<'w, 'a> {
    /// Every host whose files were committed (the canaries among them).
    pub committed: &'w [Work<'a>],
    /// The held web servers, staged.
    pub held: &'w [Work<'a>],
    /// The load balancers that commit last (staged; dropped on a stop).
    pub deferred: &'w [Work<'a>],
}

/// The stage's second half: the canaries switch release (their files are in), the
/// watch, then the held web servers commit their files. When the verdict (or a
/// failure) stops the rollout, everything the run did is undone: the held servers'
/// staged files dropped, the files committed restored (the canaries drained
/// meanwhile), the canaries' release switched back.
pub(super) async fn watch_then_the_rest<'a>(
    run: &Run<'a>,
    stage: &Stage,
    before: Before<'_, 'a>,
    releases: &mut Releases<'a>,
    rotation: Option<&Rotation<'_>>,
    reports: &mut Vec<super::report::HostReport>,
) -> Result<()> {
    let canary = run.plan.canary.as_ref().expect("a stage has a canary");
    let is_canary = |h: &str| stage.names.iter().any(|n| n == h);
    let change = change_of(run.changes, stage, releases);
    let release = (stage.names.iter()).find_map(|n| releases.to(n));
    let verdict = match releases.switch(is_canary).await {
        Err(failed) => Err(failed.error(Vec::new())),
        Ok(()) => {
            (canary.judge(&stage.names, (release, &change), &releases.lbs, run.printer)).await
        }
    };
    if let Err(e) = verdict {
        let notes = undo(run, stage, &before, releases).await;
        return Err(e.context(format!("deploying {change}\n{notes}")));
    }
    if before.held.is_empty() {
        return Ok(());
    }
    let order = commit_order(run.changes, before.held);
    match commit_all(run, before.held, order, rotation).await {
        Ok((more, _)) => {
            reports.extend(more);
            Ok(())
        }
        Err(e) => {
            // The held servers' own commits are undone already: the rest of the run too.
            let nothing_held = Before {
                held: &[],
                ..before
            };
            let notes = undo(run, stage, &nothing_held, releases).await;
            Err(e.context(notes))
        }
    }
}

/// What the canaries got, for the verdict: "release ID", "files (nginx)" or both.
fn change_of(changes: &Changes, stage: &Stage, releases: &Releases<'_>) -> String {
    let release = (stage.names.iter()).find_map(|n| releases.to(n));
    let mut services: Vec<&str> = (stage.names.iter())
        .filter_map(|n| changes.host(n))
        .filter(|_| stage.files_everywhere.is_none())
        .flat_map(|hc| hc.services.iter().map(|s| s.service.unit()))
        .collect();
    services.sort();
    services.dedup();
    let files = (stage.files_everywhere.is_none())
        && (stage.names.iter()).any(|n| changes.host(n).is_some_and(|hc| !hc.files_unchanged()));
    let files = files.then(|| format!("files ({})", services.join(", ")));
    match (release, files) {
        (Some(id), Some(f)) => format!("release {id} and {f}"),
        (Some(id), None) => format!("release {id}"),
        (None, Some(f)) => f,
        (None, None) => "nothing".into(),
    }
}

/// Undoes the run for a stopped canary; the sentence for the error.
async fn undo<'a>(
    run: &Run<'a>,
    stage: &Stage,
    before: &Before<'_, 'a>,
    releases: &mut Releases<'a>,
) -> String {
    let (info, parallel, printer) = (run.info, run.parallel, run.printer);
    let lbs = releases.lbs.clone();
    // First out of the pool: the canaries serve nothing more of what was judged.
    for name in &stage.names {
        let _ = set_backend_state(&lbs, name, ServerState::Drain, true, printer).await;
    }
    let staged: Vec<Work> = before.held.iter().chain(before.deferred).copied().collect();
    abort(&staged, info, parallel, printer).await;
    let is_canary = |h: &str| stage.names.iter().any(|n| n == h);
    // The canaries' files (their restore proven live by the agent), then their release,
    // while drained; the other hosts' files (load balancers, reloads) as any failed run's.
    let (canaries, rest): (Vec<Work>, Vec<Work>) =
        (before.committed.iter().copied()).partition(|(hp, _, _)| is_canary(hp.name()));
    let mut notes = Vec::new();
    if !canaries.is_empty() {
        notes.push(rollback(&canaries, info, parallel, printer).await);
    }
    notes.extend(releases.switch_back(is_canary, true).await);
    for name in &stage.names {
        if let Err(e) = set_backend_state(&lbs, name, ServerState::Ready, true, printer).await {
            notes.push(format!(
                "{name}: could NOT put it back into the pool: {e:#}"
            ));
        }
    }
    // Any other host switched in the run (none but canaries before the verdict).
    notes.extend(releases.switch_back(|_| true, false).await);
    if !rest.is_empty() {
        notes.push(rollback(&rest, info, parallel, printer).await);
    }
    let never: Vec<&str> = (changing_web_servers(run.plan, run.changes).into_iter())
        .filter(|w| !is_canary(w))
        .collect();
    let held = |w: &&str| before.held.iter().any(|(hp, _, _)| hp.name() == *w);
    if !never.is_empty() && never.iter().all(held) {
        notes.push(format!(
            "{} never changed (files dropped unapplied)",
            never.join(", ")
        ));
    }
    let switching = |w: &&&str| releases.to(w).is_some();
    let never_switched: Vec<&str> = never.iter().filter(switching).copied().collect();
    if !never_switched.is_empty() {
        notes.push(format!("{} never switched", never_switched.join(", ")));
    }
    notes.join("; ")
}
