//! Saved plans (`foobar-infra plan --out plan.json`): the rendered files exactly as
//! reviewed (secrets as placeholders), the hash each host had for each file when the
//! plan was made, and the changes with their diffs. `apply plan.json` applies exactly
//! that, and refuses when a host changed since or the plan is too old.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diff::Changes;
use crate::keyed_hash;
use crate::plan::{ManagedFile, Plan};
use crate::remote::agent::HostState;

pub const KIND: &str = "foobar-infra-plan";

#[derive(Debug, Serialize, Deserialize)]
pub struct PlanFile {
    pub schema: u32,
    pub kind: String,
    /// Unix seconds.
    pub created: u64,
    pub tool_version: String,
    pub inventory: PathBuf,
    pub inventory_hash: String,
    pub hosts: Vec<PlannedHost>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlannedHost {
    pub host: String,
    /// What the host had when the plan was made: path -> sha256 (None: no file).
    pub observed: BTreeMap<String, Option<String>>,
    /// The rendered files, exactly as reviewed.
    pub files: Vec<ManagedFile>,
    /// The changes (with their diffs), for review and for `diff plan.json`.
    pub changes: Value,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether a path names a saved plan rather than an inventory.
pub fn is_plan(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.trim_start().starts_with('{') && text.contains(KIND)
}

pub fn read(path: &Path) -> Result<PlanFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading plan {}", path.display()))?;
    let plan: PlanFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a foobar-infra plan", path.display()))?;
    if plan.kind != KIND || plan.schema != 1 {
        bail!("{}: not a foobar-infra plan of schema 1", path.display());
    }
    Ok(plan)
}

/// Builds the plan file from a session's plan, observations and changes.
pub fn build(
    inventory: &crate::inventory::Inventory,
    plan: &Plan,
    observed: &BTreeMap<String, HostState>,
    changes: &Changes,
) -> Result<PlanFile> {
    let inventory_path =
        std::fs::canonicalize(&inventory.path).unwrap_or_else(|_| inventory.path.clone());
    let hosts = plan
        .hosts
        .iter()
        .map(|hp| {
            let st = observed.get(hp.name());
            let observed = hp
                .files
                .iter()
                .map(|f| {
                    let seen = st.and_then(|s| s.files.get(&f.path));
                    let sha = seen.filter(|s| s.exists).and_then(|s| s.sha256.clone());
                    // A host's copy of a file with secrets: no plain hash to guess against.
                    let secret = !crate::secrets::placeholders_in(&f.content).is_empty();
                    let sha = sha.map(|s| if secret { keyed_hash::keyed(&s) } else { s });
                    (f.path.clone(), sha)
                })
                .collect();
            Ok(PlannedHost {
                host: hp.name().to_string(),
                observed,
                files: hp.files.clone(),
                changes: serde_json::to_value(changes.host(hp.name()))?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(PlanFile {
        schema: 1,
        kind: KIND.into(),
        created: now(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        inventory: inventory_path,
        inventory_hash: inventory.source_hash.clone(),
        hosts,
    })
}

impl PlanFile {
    /// Refuses a plan older than `max_age` seconds or made from another inventory.
    pub fn check_fresh(&self, inventory_hash: &str, max_age: u64, path: &Path) -> Result<()> {
        let age = now().saturating_sub(self.created);
        if age > max_age {
            bail!(
                "{}: the plan is {age} s old, more than --max-plan-age {max_age} s: make a new plan",
                path.display()
            );
        }
        if self.inventory_hash != inventory_hash {
            bail!(
                "{}: the inventory {} changed since the plan was made: make a new plan",
                path.display(),
                self.inventory.display()
            );
        }
        Ok(())
    }

    /// Puts the reviewed files in place of the freshly rendered ones, refusing when the
    /// templates now render something else (the plan is applied exactly, or not at all).
    pub fn pin(&self, plan: &mut Plan, path: &Path) -> Result<()> {
        plan.hosts
            .retain(|hp| self.hosts.iter().any(|h| h.host == hp.host.name));
        for planned in &self.hosts {
            let Some(hp) = plan.hosts.iter_mut().find(|h| h.host.name == planned.host) else {
                bail!(
                    "{}: host {} is no longer in the inventory",
                    path.display(),
                    planned.host
                );
            };
            let now: Vec<(&str, &str)> = hp
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.content.as_str()))
                .collect();
            let then: Vec<(&str, &str)> = planned
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.content.as_str()))
                .collect();
            if now != then {
                let differing = hp
                    .files
                    .iter()
                    .find(|f| {
                        !planned
                            .files
                            .iter()
                            .any(|p| p.path == f.path && p.content == f.content)
                    })
                    .map(|f| f.path.clone())
                    .unwrap_or_else(|| "a file".into());
                bail!(
                    "{}: {}: {differing} renders differently than in the plan (templates changed?): make a new plan",
                    path.display(),
                    planned.host
                );
            }
            hp.files = planned.files.clone();
        }
        Ok(())
    }

    /// Every file must still be as it was when the plan was made, or already be what the
    /// plan makes it (a plan applied twice is a no-op). Names host and file otherwise.
    pub fn check_hosts(
        &self,
        observed: &BTreeMap<String, HostState>,
        desired: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<()> {
        let mut changed = Vec::new();
        for planned in &self.hosts {
            let Some(st) = observed.get(&planned.host) else {
                continue;
            };
            for (path, then) in &planned.observed {
                let seen = st.files.get(path);
                let now = seen.filter(|s| s.exists).and_then(|s| s.sha256.clone());
                let target = desired.get(&planned.host).and_then(|d| d.get(path));
                let same = match (then, &now) {
                    (Some(then), Some(now)) => keyed_hash::matches(then, now),
                    (then, now) => then.is_none() && now.is_none(),
                };
                if !same && now.as_ref() != target {
                    let keyed = then
                        .as_deref()
                        .is_some_and(|t| t.starts_with(keyed_hash::PREFIX));
                    changed.push(format!(
                        "{}: {path} changed since the plan was made ({} then, {} now){}",
                        planned.host,
                        short(then.as_deref()),
                        short(now.as_deref()),
                        if keyed {
                            " (a file with secrets, its hash keyed by the controller that \
                             made the plan: another controller needs the same FOOBAR_HASH_KEY)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        if !changed.is_empty() {
            bail!(
                "refusing to apply the plan, nothing was changed:\n{}",
                changed.join("\n")
            );
        }
        Ok(())
    }
}

fn short(sha: Option<&str>) -> String {
    match sha {
        Some(s) if s.starts_with(keyed_hash::PREFIX) => "a keyed hash".into(),
        Some(s) => s[..s.len().min(12)].to_string(),
        None => "no file".into(),
    }
}
