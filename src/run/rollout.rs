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

/// Switches web servers to their new release one at a time, each drained from the load
/// balancers while its application restarts; on failure every host switched in this
/// run goes back to its previous release. Returns (host, seconds) per switched host.
pub(super) async fn rollout_releases(
    plan: &Plan,
    changes: &Changes,
    remotes: &[&dyn Remote],
    printer: &Printer,
) -> Result<Vec<(String, f64)>> {
    let lbs = balancers(plan, remotes);
    let stage = super::canary::stage(plan, changes);
    let mut switched: Vec<(&HostPlan, &dyn Remote, Option<String>)> = Vec::new();
    let mut done = Vec::new();
    for (hp, r) in plan.hosts.iter().zip(remotes.iter().copied()) {
        let Some(rc) = changes.host(hp.name()).and_then(|hc| hc.release.as_ref()) else {
            continue;
        };
        let t0 = Instant::now();
        let mut result = rollout_one(hp, r, &rc.to, &lbs, printer).await;
        if result.is_ok() {
            printer.event(
                json!({"event": "release", "host": hp.name(), "from": rc.from, "to": rc.to}),
            );
            switched.push((hp, r, rc.from.clone()));
            done.push((hp.name().to_string(), t0.elapsed().as_secs_f64()));
            // The canaries all switched: judged by live traffic before any other.
            if let Some((canary, names)) = stage.as_ref().filter(|(_, n)| n.len() == switched.len())
            {
                result = canary.judge(names, &rc.to, &lbs, printer).await;
            }
        }
        if let Err(e) = result {
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
            let never: Vec<&str> = (plan.hosts.iter())
                .skip_while(|h| h.name() != hp.name())
                .skip(1)
                .filter(|h| {
                    changes
                        .host(h.name())
                        .is_some_and(|hc| hc.release.is_some())
                })
                .map(|h| h.name())
                .collect();
            if !never.is_empty() {
                notes.push(format!("{} never switched", never.join(", ")));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!("\n{}.", notes.join("; "))
            };
            return Err(e).context(format!("deploying release {}{notes}", rc.to));
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
