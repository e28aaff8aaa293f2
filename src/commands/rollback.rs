//! `foobar-infra rollback`: switch every web server back to its previous release (or a
//! named one), one at a time behind the load balancers' drain, as a deploy does.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::json;

use super::{remote, runtime, Outcome};
use crate::cli::RollbackArgs;
use crate::output::Printer;
use crate::remote::Remote;
use crate::run::observe::Observe;
use crate::run::{balancer, rollout};

pub fn run(args: &RollbackArgs, p: &Arc<Printer>) -> Result<Outcome> {
    runtime()?.block_on(async {
        let mut session =
            remote::open(&args.remote, p, Observe::Full, remote::Confirm::Shown).await?;
        let result = async {
            // --limit never skips the drain (at every load balancer of the inventory).
            session.reach_outside_balancers(&args.remote, p).await?;
            let remotes = session.remotes();
            let lbs = balancer::balancers(&session.plan, &remotes);
            let mut targets = Vec::new();
            for (hp, r) in session.plan.hosts.iter().zip(remotes.iter().copied()) {
                if hp.release.is_none() {
                    continue;
                }
                let st = session.observed.get(hp.name()).and_then(|s| s.release.clone()).unwrap_or_default();
                let target = match &args.to {
                    Some(id) => {
                        if !st.releases.contains(id) {
                            bail!("{}: release {id} is not on this host (it has: {})", hp.name(), st.releases.join(", "));
                        }
                        id.clone()
                    }
                    None => {
                        let Some(cur) = st.current.as_ref() else {
                            bail!("{}: no release is deployed", hp.name());
                        };
                        let pos = st.releases.iter().position(|r| r == cur).unwrap_or(0);
                        match pos.checked_sub(1).and_then(|i| st.releases.get(i)) {
                            Some(prev) => prev.clone(),
                            None => bail!("{}: no release older than {cur} is kept", hp.name()),
                        }
                    }
                };
                if st.current.as_deref() != Some(target.as_str()) {
                    targets.push((hp, r, st.current.clone(), target));
                }
            }
            if targets.is_empty() {
                p.status("In sync", "every web server already serves that release");
                return Ok(());
            }
            for (hp, r, from, to) in &targets {
                rollout::rollout_one(hp, *r as &dyn Remote, to, &lbs, p).await?;
                p.event(json!({"event": "release", "host": hp.name(), "from": from, "to": to}));
                p.status("Rolled back", format!("{} {} -> {to}", hp.name(), from.as_deref().unwrap_or("none")));
            }
            p.warn("the inventory's app.source still names the newer files: the next apply deploys them again");
            Ok(())
        }
        .await;
        session.close().await;
        result.map(|_| Outcome::Success)
    })
}
