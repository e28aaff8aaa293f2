//! The release rollout: web servers switch to their new application release one at a
//! time, each drained from the load balancers meanwhile; a failure switches back
//! every host switched in the run.

use std::time::Instant;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::json;

use super::balancer::{balancers, set_backend_state};
use super::parallel::bounded;
use super::report::host_error;
use super::{Run, Work};
use crate::diff::Changes;
use crate::error::HostFailure;
use crate::output::Printer;
use crate::plan::{HostPlan, Plan, Service};
use crate::protocol;
use crate::protocol::release::{HealthCheck, ReleaseSwitch, ReleaseUpload, ServerState, Switched};
use crate::remote::Remote;

/// Uploads each new release beside the current one (not served yet), before anything
/// is staged; a failure stops the run with nothing changed.
pub(super) async fn upload_releases(run: &Run<'_>) -> Result<()> {
    let Run {
        plan,
        changes,
        remotes,
        parallel,
        printer,
        ..
    } = *run;
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
        let request = ReleaseUpload {
            root: rel.root.clone(),
            id: rel.id.clone(),
            tar_b64: b64,
        };
        protocol::call(r, &request).await
    })
    .await;
    let failures: Vec<HostFailure> = uploads
        .iter()
        .zip(&uploaded)
        .filter_map(|((hp, _, _), res)| {
            let e = res.as_ref().err()?;
            let line = host_error(hp.name(), "uploading the release", e);
            Some(HostFailure::new(hp.name(), line, e))
        })
        .collect();
    if !failures.is_empty() {
        return Err(crate::error::of_hosts(
            Some("nothing was changed on any host:"),
            &failures,
        ));
    }
    Ok(())
}

/// A run's release switches: web servers switch one at a time, each drained from the
/// load balancers while its application restarts, and are remembered so that a failure
/// (or a failed canary) switches them back.
pub(super) struct Releases<'a> {
    plan: &'a Plan,
    changes: &'a Changes,
    remotes: &'a [&'a dyn Remote],
    printer: &'a Printer,
    pub lbs: Vec<(&'a HostPlan, &'a dyn Remote)>,
    /// Switched in this run, in order, with the release each had before.
    switched: Vec<(&'a HostPlan, &'a dyn Remote, Option<String>)>,
    /// (host, seconds) per host switched.
    pub done: Vec<(String, f64)>,
}

impl<'a> Releases<'a> {
    pub(super) fn new(run: &Run<'a>) -> Releases<'a> {
        Releases {
            plan: run.plan,
            changes: run.changes,
            remotes: run.remotes,
            printer: run.printer,
            lbs: balancers(run.plan, run.remotes),
            switched: Vec::new(),
            done: Vec::new(),
        }
    }

    /// The release `host` switches to in this run.
    pub(super) fn to(&self, host: &str) -> Option<&'a str> {
        let hc = self.changes.host(host)?;
        hc.release.as_ref().map(|rc| rc.to.as_str())
    }

    /// Switches the hosts `pick` selects that have a new release, in the plan's order.
    /// On failure those switched stay switched until [`Releases::switch_back`].
    pub(super) async fn switch(&mut self, pick: impl Fn(&str) -> bool) -> Result<(), SwitchFailed> {
        let hosts = self.plan.hosts.iter().zip(self.remotes.iter().copied());
        let done = |name: &str| self.switched.iter().any(|(hp, _, _)| hp.name() == name);
        let todo: Vec<_> = hosts
            .filter(|(hp, _)| pick(hp.name()) && !done(hp.name()))
            .collect();
        for (hp, r) in todo {
            let Some(rc) = self
                .changes
                .host(hp.name())
                .and_then(|hc| hc.release.as_ref())
            else {
                continue;
            };
            let t0 = Instant::now();
            let printer = self.printer;
            if let Err(cause) = rollout_one(hp, r, &rc.to, &self.lbs, printer).await {
                let never = self.never_switched(hp.name());
                let to = rc.to.clone();
                return Err(SwitchFailed { cause, to, never });
            }
            printer.event(
                json!({"event": "release", "host": hp.name(), "from": rc.from, "to": rc.to}),
            );
            self.switched.push((hp, r, rc.from.clone()));
            (self.done).push((hp.name().to_string(), t0.elapsed().as_secs_f64()));
        }
        Ok(())
    }

    /// The hosts with a new release after `host` in the plan's order.
    fn never_switched(&self, host: &str) -> Vec<String> {
        (self.plan.hosts.iter())
            .skip_while(|h| h.name() != host)
            .skip(1)
            .filter(|h| (self.changes.host(h.name())).is_some_and(|hc| hc.release.is_some()))
            .map(|h| h.name().to_string())
            .collect()
    }

    /// Switches back the hosts `pick` selects among those switched in this run (the
    /// last first), each drained meanwhile (`drained`: the caller drained them); one
    /// note per host, for the run's error.
    pub(super) async fn switch_back(
        &mut self,
        pick: impl Fn(&str) -> bool,
        drained: bool,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let (back, kept): (Vec<_>, Vec<_>) =
            (self.switched.drain(..)).partition(|(hp, _, _)| pick(hp.name()));
        self.switched = kept;
        for (hp, r, prev) in back.into_iter().rev() {
            let Some(prev) = prev else { continue };
            let back = if drained {
                (self.printer).status("Switching", format!("{} back to release {prev}", hp.name()));
                switch_release(hp, r, &prev).await.map(|_| ())
            } else {
                rollout_one(hp, r, &prev, &self.lbs, self.printer).await
            };
            match back {
                Ok(()) => notes.push(format!("{} is back on release {prev}", hp.name())),
                Err(e) => notes.push(format!(
                    "{}: could NOT switch back to {prev}: {e:#}",
                    hp.name()
                )),
            }
        }
        notes
    }
}

/// A release switch that failed: the cause, the release, the hosts never switched.
pub(super) struct SwitchFailed {
    cause: anyhow::Error,
    to: String,
    never: Vec<String>,
}

impl SwitchFailed {
    /// The run's error: the cause, with what was undone (`notes`) and never done.
    pub(super) fn error(self, mut notes: Vec<String>) -> anyhow::Error {
        if !self.never.is_empty() {
            notes.push(format!("{} never switched", self.never.join(", ")));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("\n{}.", notes.join("; "))
        };
        (self.cause).context(format!("deploying release {}{notes}", self.to))
    }
}

/// Switches every web server with a new release (`pick` selects which), switching back
/// every host switched in the run on failure: the error then says which.
pub(super) async fn rollout_releases(
    releases: &mut Releases<'_>,
    pick: impl Fn(&str) -> bool,
) -> Result<()> {
    let Err(failed) = releases.switch(pick).await else {
        return Ok(());
    };
    let notes = releases.switch_back(|_| true, false).await;
    Err(failed.error(notes))
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
    set_backend_state(lbs, hp.name(), ServerState::Drain, true, printer).await?;
    printer.status("Switching", format!("{} to release {id}", hp.name()));
    let result = switch_release(hp, r, id).await.map(|_| ());
    // Its release and database are in place: it must pass its health check now.
    let back = set_backend_state(lbs, hp.name(), ServerState::Ready, true, printer).await;
    result?;
    back
}

async fn switch_release(hp: &HostPlan, r: &dyn Remote, id: &str) -> Result<Switched> {
    let rel = hp.release.as_ref().context("no release planned")?;
    let request = ReleaseSwitch {
        root: rel.root.clone(),
        id: id.to_string(),
        keep: rel.keep as u64,
        service: Service::App.unit().to_string(),
        check: HealthCheck {
            port: 80,
            path: "/health".into(),
            host: hp.host.name.clone(),
            timeout_s: 30,
        },
    };
    // A release that does not pass its health check is switched back by the agent: a
    // health failure, whatever the agent calls it.
    protocol::call(r, &request).await.map_err(|e| {
        let what = format!("switching to release {id}");
        let e = anyhow::anyhow!(host_error(hp.name(), &what, &e));
        crate::error::tag(e, crate::error::ErrorKind::Health, Some(hp.name()))
    })
}
