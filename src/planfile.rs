//! Saved plans (`foobar-infra plan --out plan.json`): the rendered files exactly as
//! reviewed (secrets as placeholders), the hash each host had for each file when the
//! plan was made, and the changes with their diffs. `apply plan.json` applies exactly
//! that, and refuses when a host changed since or the plan is too old.
//!
//! A plan is never trusted to say what to apply (SECURITY.md, finding 4): the inventory
//! is the one given with `--inventory` or found beside the plan by its hash (the path
//! the plan names is only shown); the inventory's and the templates' hashes must be the
//! plan's; every file the plan holds (content, mode, owner, group, service) must be what
//! that inventory renders now; and a plan edited after `plan` wrote it fails its own
//! checksum first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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
    /// Where the inventory was when the plan was made: shown in messages, never read.
    pub inventory: PathBuf,
    pub inventory_hash: String,
    /// [`crate::templates::Templates::source_hash`] of the templates it was made with.
    #[serde(default)]
    pub templates_hash: String,
    pub hosts: Vec<PlannedHost>,
    /// SHA-256 of the plan's JSON without this field (see [`checksum_of`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
}

/// The checksum of a plan: SHA-256 of its compact JSON with `checksum` left out (a
/// round trip through serde_json gives the same text however the file was laid out).
fn checksum_of(plan: &PlanFile) -> Result<String> {
    debug_assert!(plan.checksum.is_empty());
    let body = serde_json::to_vec(plan).context("encoding the plan")?;
    Ok(hex::encode(Sha256::digest(&body)))
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

/// Reads a plan and checks it against its own checksum.
pub fn read(path: &Path) -> Result<PlanFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading plan {}", path.display()))?;
    let mut plan: PlanFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a foobar-infra plan", path.display()))?;
    if plan.kind != KIND || plan.schema != 1 {
        bail!("{}: not a foobar-infra plan of schema 1", path.display());
    }
    let claimed = std::mem::take(&mut plan.checksum);
    if claimed.is_empty() || plan.templates_hash.is_empty() {
        bail!(
            "{}: the plan has no checksum or templates hash to check it by (made by hand, or by an \
             older foobar-infra): make a new plan",
            path.display()
        );
    }
    if checksum_of(&plan)? != claimed {
        bail!(
            "{}: the plan does not match its own checksum: it was changed after `plan` wrote it; \
             make a new plan",
            path.display()
        );
    }
    plan.checksum = claimed;
    Ok(plan)
}

/// Builds the plan file from a session's plan, observations and changes, and the hash
/// of the templates it was rendered with.
pub fn build(
    inventory: &crate::inventory::Inventory,
    templates_hash: &str,
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
    let mut file = PlanFile {
        schema: 1,
        kind: KIND.into(),
        created: now(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        inventory: inventory_path,
        inventory_hash: inventory.source_hash.clone(),
        templates_hash: templates_hash.to_string(),
        hosts,
        checksum: String::new(),
    };
    file.checksum = checksum_of(&file)?;
    Ok(file)
}

/// SHA-256 of a file's bytes as an inventory's `source_hash` is computed.
fn file_hash(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    // An inventory is at most 1 MiB (src/inventory/limits.rs).
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Some(hex::encode(Sha256::digest(text.as_bytes())))
}

impl PlanFile {
    /// The inventory to apply this plan (at `path`) with: `given` (`--inventory`), or
    /// the one YAML file beside the plan whose hash is the plan's. Never the path the
    /// plan names (a plan must not choose its own inventory).
    pub fn inventory_for(&self, path: &Path, given: Option<&Path>) -> Result<PathBuf> {
        if let Some(given) = given {
            return Ok(given.to_path_buf());
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("looking for the plan's inventory in {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .filter(|p| file_hash(p).as_deref() == Some(self.inventory_hash.as_str()))
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => bail!(
                "{}: no inventory beside the plan has the hash it was made from (the plan names {}, \
                 which is never read from the plan): give it with --inventory INVENTORY",
                path.display(),
                self.inventory.display()
            ),
            _ => bail!(
                "{}: several files beside the plan have its inventory's hash ({}): give one with \
                 --inventory INVENTORY",
                path.display(),
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Refuses a plan older than `max_age` seconds, or made from another inventory or
    /// other templates than `inventory` and `templates_hash`.
    pub fn check_fresh(
        &self,
        inventory: &crate::inventory::Inventory,
        templates_hash: &str,
        max_age: u64,
        path: &Path,
    ) -> Result<()> {
        let age = now().saturating_sub(self.created);
        if age > max_age {
            bail!(
                "{}: the plan is {age} s old, more than --max-plan-age {max_age} s: make a new plan",
                path.display()
            );
        }
        if self.inventory_hash != inventory.source_hash {
            bail!(
                "{}: the plan was made from another inventory than {} (its hash differs: the \
                 inventory changed since, or it is not the one the plan was made from): make a new plan",
                path.display(),
                inventory.path.display()
            );
        }
        if self.templates_hash != templates_hash {
            bail!(
                "{}: the plan was made with other templates (the built-in ones of another version, \
                 or other --templates overrides): make a new plan",
                path.display()
            );
        }
        Ok(())
    }

    /// Keeps the hosts the plan has, and checks that every file the plan holds is what
    /// the inventory renders now, field by field (content, mode, owner, group, service,
    /// template, init): the plan is applied exactly, or not at all, and nothing in it
    /// is taken on trust.
    pub fn pin(&self, plan: &mut Plan, path: &Path) -> Result<()> {
        plan.hosts
            .retain(|hp| self.hosts.iter().any(|h| h.host == hp.host.name));
        for planned in &self.hosts {
            let Some(hp) = plan.hosts.iter().find(|h| h.host.name == planned.host) else {
                bail!(
                    "{}: host {} is no longer in the inventory",
                    path.display(),
                    planned.host
                );
            };
            let refuse = |file: &str, what: &str| {
                anyhow::anyhow!(
                    "{}: {}: {file}: {what} (the plan was edited, or what the inventory \
                     points to changed since): make a new plan",
                    path.display(),
                    planned.host
                )
            };
            for f in &hp.files {
                if !planned.files.iter().any(|p| p.path == f.path) {
                    return Err(refuse(
                        &f.path,
                        "rendered by the inventory but not in the plan",
                    ));
                }
            }
            for p in &planned.files {
                let Some(f) = hp.files.iter().find(|f| f.path == p.path) else {
                    return Err(refuse(
                        &p.path,
                        "in the plan but not rendered by the inventory",
                    ));
                };
                if let Some(field) = differing_field(f, p) {
                    return Err(refuse(
                        &p.path,
                        &format!("its {field} in the plan is not what the inventory renders"),
                    ));
                }
            }
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

/// The first field in which a rendered file and the plan's copy differ.
fn differing_field(rendered: &ManagedFile, planned: &ManagedFile) -> Option<&'static str> {
    let r = rendered;
    let p = planned;
    [
        ("content", r.content == p.content),
        ("mode", r.mode == p.mode),
        ("owner", r.owner == p.owner),
        ("group", r.group == p.group),
        ("service", r.service == p.service),
        ("template", r.template == p.template),
        ("init system", r.init == p.init),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(field, _)| field)
}

fn short(sha: Option<&str>) -> String {
    match sha {
        Some(s) if s.starts_with(keyed_hash::PREFIX) => "a keyed hash".into(),
        Some(s) => s[..s.len().min(12)].to_string(),
        None => "no file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::templates::Templates;

    /// A plan of the production-shaped inventory (every host observed with other
    /// files), saved as `dir/plan.json`; the inventory, the templates' hash and the path.
    fn saved_plan(dir: &Path) -> (Inventory, String, PathBuf) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let inv = Inventory::load(&root.join("inventory/inventory.yaml")).unwrap();
        let templates = Templates::load(None).unwrap();
        let plan = crate::render::render(&inv, &templates).unwrap();
        let secrets = crate::secrets::Secrets::with(&[
            ("db_app_password", "hunter2"),
            ("db_replication_password", "swordfish"),
        ]);
        let observed: BTreeMap<String, HostState> = plan
            .hosts
            .iter()
            .map(|hp| {
                let state =
                    serde_json::json!({"init": "systemd", "hostname": hp.name(), "files": {}});
                (
                    hp.name().to_string(),
                    serde_json::from_value(state).unwrap(),
                )
            })
            .collect();
        let changes = crate::diff::diff(&plan, &observed, &secrets).unwrap();
        let hash = templates.source_hash();
        let file = build(&inv, &hash, &plan, &observed, &changes).unwrap();
        let path = dir.join("plan.json");
        std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
        (inv, hash, path)
    }

    /// Edits the saved plan's JSON; with `reseal`, puts a right checksum back (as someone
    /// who knows how it is computed would).
    fn edit(path: &Path, reseal: bool, change: impl FnOnce(&mut Value)) {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        change(&mut v);
        if reseal {
            v["checksum"] = Value::String(String::new());
            let mut file: PlanFile = serde_json::from_value(v).unwrap();
            file.checksum = checksum_of(&file).unwrap();
            v = serde_json::to_value(&file).unwrap();
        }
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Finding 4 of issue 20: `apply plan.json` loaded the inventory path stored in the
    /// plan, and took each file's mode, owner and service from the plan.
    #[test]
    fn finding_4_a_saved_plan_never_chooses_its_inventory_nor_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let (inv, templates_hash, path) = saved_plan(dir.path());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rendered = || {
            let t = Templates::load(None).unwrap();
            crate::render::render(&inv, &t).unwrap()
        };
        let plan = read(&path).unwrap();
        plan.check_fresh(&inv, &templates_hash, 60, &path).unwrap();
        plan.pin(&mut rendered(), &path).unwrap();

        // The inventory: never the path inside the plan. Beside the plan by hash, or given.
        let e = plan.inventory_for(&path, None).unwrap_err().to_string();
        assert!(e.contains("--inventory"), "{e}");
        let beside = dir.path().join("production.yaml");
        std::fs::copy(root.join("inventory/inventory.yaml"), &beside).unwrap();
        std::fs::write(dir.path().join("other.yaml"), "domain: example.org\n").unwrap();
        assert_eq!(plan.inventory_for(&path, None).unwrap(), beside);
        let given = Path::new("/somewhere/inventory.yaml");
        assert_eq!(plan.inventory_for(&path, Some(given)).unwrap(), given);
        // A plan naming another inventory (and its hash): the name is not followed.
        edit(&path, true, |v| {
            v["inventory"] = "/etc/evil/inventory.yaml".into()
        });
        let named = read(&path).unwrap();
        assert_eq!(named.inventory_for(&path, None).unwrap(), beside);

        // Another inventory or other templates than the plan's: refused.
        let lab = Inventory::load(&root.join("lab/inventory.yaml"));
        if let Ok(other) = lab {
            let e = plan
                .check_fresh(&other, &templates_hash, 60, &path)
                .unwrap_err();
            assert!(e.to_string().contains("another inventory"), "{e}");
        }
        let e = plan.check_fresh(&inv, "0000", 60, &path).unwrap_err();
        assert!(e.to_string().contains("other templates"), "{e}");

        // Edited after `plan` wrote it: its own checksum says so, before anything else.
        for (what, change) in [
            (
                "mode",
                (|v: &mut Value| v["hosts"][0]["files"][0]["mode"] = 0o666.into())
                    as fn(&mut Value),
            ),
            ("owner", |v| {
                v["hosts"][0]["files"][0]["owner"] = "nobody".into()
            }),
            ("content", |v| {
                v["hosts"][0]["files"][0]["content"] = "evil\n".into()
            }),
            ("inventory", |v| v["inventory"] = "/tmp/other.yaml".into()),
        ] {
            saved_plan(dir.path());
            edit(&path, false, change);
            let e = read(&path).unwrap_err().to_string();
            assert!(e.contains("does not match its own checksum"), "{what}: {e}");
            assert!(!e.contains("templates changed"), "{what}: {e}");
        }
        saved_plan(dir.path());
        edit(&path, false, |v| {
            v.as_object_mut().unwrap().remove("checksum");
        });
        assert!(read(&path).unwrap_err().to_string().contains("no checksum"));

        // Edited and resealed: every file is still compared with what the inventory
        // renders, field by field; none is taken from the plan.
        for (field, change) in [
            (
                "mode",
                (|v: &mut Value| v["hosts"][0]["files"][0]["mode"] = 0o666.into())
                    as fn(&mut Value),
            ),
            ("owner", |v| {
                v["hosts"][0]["files"][0]["owner"] = "nobody".into()
            }),
            ("group", |v| {
                v["hosts"][0]["files"][0]["group"] = "nogroup".into()
            }),
            ("service", |v| {
                v["hosts"][0]["files"][0]["service"] = "mariadb".into()
            }),
            ("content", |v| {
                v["hosts"][0]["files"][0]["content"] = "evil\n".into()
            }),
        ] {
            saved_plan(dir.path());
            edit(&path, true, change);
            let resealed = read(&path).unwrap();
            let e = resealed
                .pin(&mut rendered(), &path)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("its {field} in the plan")),
                "{field}: {e}"
            );
        }
        saved_plan(dir.path());
        edit(&path, true, |v| {
            let files = v["hosts"][0]["files"].as_array_mut().unwrap();
            let mut extra = files[0].clone();
            extra["path"] = "/etc/sudoers.d/evil".into();
            files.push(extra);
        });
        let e = read(&path)
            .unwrap()
            .pin(&mut rendered(), &path)
            .unwrap_err();
        assert!(
            e.to_string().contains("not rendered by the inventory"),
            "{e}"
        );
    }
}
