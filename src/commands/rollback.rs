//! `foobar-infra rollback`: switch every web server back to its previous release (or a
//! named one), one at a time behind the load balancers' drain, as a deploy does.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use super::{remote, runtime, Outcome};
use crate::cli::RollbackArgs;
use crate::output::Printer;
use crate::remote::agent::ReleaseState;
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
            let mut wanted = Vec::new();
            let mut hosts = Vec::new();
            for (hp, r) in session.plan.hosts.iter().zip(remotes.iter().copied()) {
                if hp.release.is_none() {
                    continue;
                }
                let st = session.observed.get(hp.name()).and_then(|s| s.release.clone()).unwrap_or_default();
                wanted.push((hp.name().to_string(), st));
                hosts.push((hp, r));
            }
            let chosen = choose_targets(&wanted, args.to.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}{}", e.how(&args.remote.inventory.display().to_string())))?;
            let targets: Vec<_> = hosts
                .into_iter()
                .zip(chosen)
                .filter_map(|((hp, r), m)| m.to.map(|to| (hp, r, m.from, to)))
                .collect();
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

/// Why no rollback target fits every web server: the hosts that cannot follow and
/// those that can.
#[derive(Debug)]
pub struct NoCommonTarget {
    reason: String,
    cannot: Vec<String>,
    can: Vec<String>,
}

impl std::fmt::Display for NoCommonTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: nothing was changed", self.reason)
    }
}

impl NoCommonTarget {
    /// How to roll back the servers that can (all-or-nothing holds: none moved).
    fn how(&self, inventory: &str) -> String {
        if self.can.is_empty() {
            return String::new();
        }
        format!(
            "; to roll back only {} (leaving {} as it is): foobar-infra rollback {inventory} --limit {}",
            self.can.join(", "),
            self.cannot.join(", "),
            self.can.join(",")
        )
    }
}

/// A web server's current release and the one it goes back to (None: already there).
#[derive(Debug, PartialEq)]
pub struct Move {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Each web server's current release and the release it goes back to (None: already
/// there), all or none: a server that has no such release refuses the whole rollback,
/// naming it, what it keeps, and the servers that could go back.
pub fn choose_targets(
    hosts: &[(String, ReleaseState)],
    to: Option<&str>,
) -> std::result::Result<Vec<Move>, NoCommonTarget> {
    let mut chosen = Vec::new();
    let (mut can, mut cannot, mut why) = (Vec::new(), Vec::new(), Vec::new());
    for (name, st) in hosts {
        let target = match to {
            Some(id) if st.releases.iter().any(|r| r == id) => Ok(id.to_string()),
            Some(id) => Err(format!(
                "{name}: release {id} is not on this host (it has: {})",
                kept(st)
            )),
            None => match st.current.as_ref() {
                None => Err(format!("{name}: no release is deployed")),
                Some(cur) => {
                    let pos = st.releases.iter().position(|r| r == cur).unwrap_or(0);
                    match pos.checked_sub(1).and_then(|i| st.releases.get(i)) {
                        Some(prev) => Ok(prev.clone()),
                        None => Err(format!(
                            "{name}: no release older than {cur} is kept (it has: {})",
                            kept(st)
                        )),
                    }
                }
            },
        };
        match target {
            Ok(t) => {
                can.push(name.clone());
                let moves = st.current.as_deref() != Some(t.as_str());
                chosen.push(Move {
                    from: st.current.clone(),
                    to: moves.then_some(t),
                });
            }
            Err(e) => {
                cannot.push(name.clone());
                why.push(e);
            }
        }
    }
    if why.is_empty() {
        Ok(chosen)
    } else {
        Err(NoCommonTarget {
            reason: why.join("; "),
            cannot,
            can,
        })
    }
}

fn kept(st: &ReleaseState) -> String {
    if st.releases.is_empty() {
        "none".into()
    } else {
        st.releases.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, releases: &[&str], current: &str) -> (String, ReleaseState) {
        let st = serde_json::from_value(json!({
            "releases": releases, "current": current,
        }))
        .unwrap();
        (name.to_string(), st)
    }

    #[test]
    fn each_server_goes_back_to_its_previous_release() {
        let hosts = [
            host("web-01", &["r1", "r2"], "r2"),
            host("web-02", &["r1", "r2", "r3"], "r3"),
        ];
        let got = choose_targets(&hosts, None).unwrap();
        let step = |from: &str, to: &str| Move {
            from: Some(from.into()),
            to: Some(to.into()),
        };
        assert_eq!(got, [step("r2", "r1"), step("r3", "r2")]);
        let hosts = [
            host("web-01", &["r1", "r2"], "r2"),
            host("web-02", &["r1", "r2"], "r2"),
        ];
        let got = choose_targets(&hosts, Some("r1")).unwrap();
        assert!(got.iter().all(|m| m.to.as_deref() == Some("r1")));
    }

    #[test]
    fn a_server_added_later_refuses_all_and_says_how_to_roll_back_the_others() {
        let hosts = [
            host("web-01", &["r1", "r2"], "r2"),
            host("web-02", &["r1", "r2"], "r2"),
            host("web-03", &["r2"], "r2"),
        ];
        let e = choose_targets(&hosts, None).unwrap_err();
        let text = format!("{e}{}", e.how("inv.yaml"));
        assert!(
            text.starts_with("web-03: no release older than r2 is kept (it has: r2)"),
            "{text}"
        );
        assert!(text.contains("nothing was changed"), "{text}");
        assert!(
            text.ends_with("to roll back only web-01, web-02 (leaving web-03 as it is): foobar-infra rollback inv.yaml --limit web-01,web-02"),
            "{text}"
        );
        let e = choose_targets(&hosts, Some("r1")).unwrap_err();
        assert!(
            format!("{e}").starts_with("web-03: release r1 is not on this host (it has: r2)"),
            "{e}"
        );
        assert!(choose_targets(&hosts, Some("r2"))
            .unwrap()
            .iter()
            .all(|m| m.to.is_none()));
    }
}
