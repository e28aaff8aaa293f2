//! Diffing: the rendered plan against what the hosts reported, into typed [`Changes`]
//! (files to create, modify or delete, services to reload, restart or start, packages
//! to install). Pure: no network; secrets are resolved for hashing and masked for display.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::boot::BootChange;
use crate::database::DbChange;
use crate::plan::{HostPlan, Init, ManagedFile, Plan, Service, ServiceAction};
use crate::remote::agent::{FileState, HostState, ManifestEntry};
use crate::secrets::Secrets;
use topology::topology;
pub use topology::Topology;

mod topology;

/// What happens to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileChangeKind {
    Create,
    Modify,
    /// Only owner or mode differ.
    Metadata,
    Delete,
}

/// Serialized by src/keyed_hash.rs: the hashes of a file with secrets are keyed there.
#[derive(Debug, Clone, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub kind: FileChangeKind,
    pub service: Service,
    /// Unified diff, secrets masked.
    pub diff: String,
    /// The host's hash when observed (None: no file), checked again when staging.
    pub observed_sha256: Option<String>,
    /// sha256 of the resolved content to push (None for deletions).
    pub new_sha256: Option<String>,
    #[serde(skip, default)]
    pub new_content: Option<String>,
    pub mode: String,
    pub owner: String,
    pub group: String,
    /// The file holds a secret (or may: a deletion), so its hashes are published keyed.
    #[serde(skip, default)]
    pub carries_secret: bool,
}

/// Why a service is acted on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceChange {
    pub service: Service,
    pub action: ServiceAction,
    pub reason: String,
}

/// Everything that would change on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostChanges {
    pub host: String,
    pub files: Vec<FileChange>,
    pub services: Vec<ServiceChange>,
    pub install: Vec<String>,
    pub db: Option<DbChange>,
    /// System users to create.
    pub create_users: Vec<String>,
    pub release: Option<ReleaseChange>,
    /// The manifest the host keeps after this apply: every planned file and its hash.
    #[serde(skip, default)]
    pub manifest: Vec<ManifestEntry>,
    /// The host's manifest is not that one (files already as planned but put there by
    /// hand or another tool, or entries for files gone since): apply records it. Without
    /// it the host would never be vouched for by the witness and its managed files
    /// would not be known for removal.
    #[serde(default)]
    pub record_manifest: bool,
    /// Services to enable or disable at boot (src/boot.rs).
    #[serde(default)]
    pub boot: Vec<BootChange>,
}

impl HostChanges {
    pub fn is_empty(&self) -> bool {
        self.files_unchanged() && self.db.is_none() && self.release.is_none()
    }

    /// Only the manifest to record: every planned file already in place.
    pub fn manifest_only(&self) -> bool {
        self.record_manifest && self.files.is_empty()
    }

    /// Nothing to stage or commit (a database change may remain).
    pub fn files_unchanged(&self) -> bool {
        self.files.is_empty()
            && self.services.is_empty()
            && self.install.is_empty()
            && self.create_users.is_empty()
            && !self.record_manifest
            && self.boot.is_empty()
    }
}

/// A web server moving to another application release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseChange {
    pub from: Option<String>,
    pub to: String,
    /// The release is not on the host yet.
    pub upload: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default)]
    pub topology: Topology,
    pub hosts: Vec<HostChanges>,
    /// Web servers that were UP at a load balancer when observed: only those are
    /// waited for when they go back into the pool (one never in service, e.g. on the
    /// first deploy, cannot pass its health check before its release and database are
    /// in place).
    #[serde(default)]
    pub in_service: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.hosts.iter().all(HostChanges::is_empty)
    }

    pub fn host(&self, name: &str) -> Option<&HostChanges> {
        self.hosts.iter().find(|h| h.host == name)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The hashes `observe` is asked to compare, per path: the resolved content's sha256.
pub fn desired_hashes(hp: &HostPlan, secrets: &Secrets) -> Result<BTreeMap<String, String>> {
    hp.files
        .iter()
        .map(|f| {
            Ok((
                f.path.clone(),
                sha256_hex(secrets.resolve(&f.content)?.as_bytes()),
            ))
        })
        .collect()
}

/// A unified diff of `path`; a side labelled `/dev/null` (a file created or deleted) is
/// named so alone, as `diff -u` and git do.
fn unified(old: &str, new: &str, path: &str, old_label: &str, new_label: &str) -> String {
    let side = |label: &str| match label {
        NO_FILE => NO_FILE.to_string(),
        _ => format!("{label}{path}"),
    };
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&side(old_label), &side(new_label))
        .to_string()
}

/// The side of a diff where a file does not exist.
const NO_FILE: &str = "/dev/null";

/// Compares one host's plan with its observed state.
pub fn diff_host(hp: &HostPlan, state: &HostState, secrets: &Secrets) -> Result<HostChanges> {
    let mut d = FileDiff::default();
    let init = if state.init == "systemd" {
        Init::Systemd
    } else {
        Init::Sysv
    };
    for f in hp.files.iter().filter(|f| f.init.is_none_or(|i| i == init)) {
        d.planned(f, state, secrets)?;
    }
    // Files this tool wrote earlier that are no longer in the plan.
    for entry in &state.manifest {
        if hp.file(&entry.path).is_none() {
            d.removed(hp, entry, state, secrets);
        }
    }
    let (install, services) = service_changes(hp, state, &d);
    let FileDiff {
        files,
        manifest,
        stopped,
        ..
    } = d;
    let boot = crate::boot::changes(hp, state, &services, &stopped);
    Ok(HostChanges {
        host: hp.name().to_string(),
        files,
        services,
        boot,
        install,
        db: crate::database::diff(hp, state.db.as_ref()).or_else(|| {
            let r = state.former_replica.as_ref().filter(|_| hp.db.is_none())?;
            Some(DbChange::RemoveReplica {
                from: r.master_host.clone().unwrap_or_default(),
            })
        }),
        create_users: hp
            .users
            .iter()
            .filter(|u| !state.users.get(*u).copied().unwrap_or(false))
            .cloned()
            .collect(),
        release: hp.release.as_ref().and_then(|rel| {
            let seen = state.release.clone().unwrap_or_default();
            (seen.current.as_deref() != Some(rel.id.as_str())).then(|| ReleaseChange {
                from: seen.current.clone(),
                to: rel.id.clone(),
                upload: !seen.releases.contains(&rel.id),
            })
        }),
        record_manifest: !same_entries(&manifest, &state.manifest),
        manifest,
    })
}

/// One host's files diffed, as [`diff_host`] goes through them.
#[derive(Default)]
struct FileDiff {
    files: Vec<FileChange>,
    /// What the host's manifest records once the change is applied.
    manifest: Vec<ManifestEntry>,
    /// The planned services with a changed file, in the order first met.
    touched: Vec<Service>,
    /// The services whose files all left the plan (their role left the host).
    stopped: Vec<Service>,
}

impl FileDiff {
    /// A planned file: its manifest entry, and its change unless the host has it as
    /// planned.
    fn planned(&mut self, f: &ManagedFile, state: &HostState, secrets: &Secrets) -> Result<()> {
        let resolved = secrets.resolve(&f.content)?;
        let new_sha = sha256_hex(resolved.as_bytes());
        self.manifest.push(ManifestEntry {
            path: f.path.clone(),
            sha256: Some(new_sha.clone()),
            mode: f.mode_string(),
            owner: f.owner.clone(),
            group: f.group.clone(),
            service: f.service.unit().to_string(),
        });
        let seen = state.files.get(&f.path).cloned().unwrap_or_default();
        let mode = f.mode_string();
        let Some(kind) = planned_kind(f, &seen, &new_sha, &mode) else {
            return Ok(());
        };
        let diff = match kind {
            FileChangeKind::Create => unified("", &f.content, &f.path, NO_FILE, "b"),
            FileChangeKind::Modify => {
                let old = seen
                    .content()
                    .map(|c| secrets.mask_like(&c, &f.content))
                    .unwrap_or_else(|| {
                        format!("(content not shown: {} bytes)\n", seen.size.unwrap_or(0))
                    });
                unified(&old, &f.content, &f.path, "a", "b")
            }
            FileChangeKind::Metadata => format!(
                "{}: mode {} owner {}:{} -> mode {} owner {}:{}\n",
                f.path,
                seen.mode.as_deref().unwrap_or("?"),
                seen.owner.as_deref().unwrap_or("?"),
                seen.group.as_deref().unwrap_or("?"),
                mode,
                f.owner,
                f.group
            ),
            FileChangeKind::Delete => unreachable!(),
        };
        if !self.touched.contains(&f.service) {
            self.touched.push(f.service);
        }
        self.files.push(FileChange {
            path: f.path.clone(),
            kind,
            service: f.service,
            diff,
            observed_sha256: observed_sha(&seen),
            new_sha256: Some(new_sha),
            new_content: Some(resolved),
            mode,
            owner: f.owner.clone(),
            group: f.group.clone(),
            carries_secret: !crate::secrets::placeholders_in(&f.content).is_empty(),
        });
        Ok(())
    }

    /// A file this tool wrote earlier that is no longer planned: deleted (or put back as
    /// it was before the first apply) if the host still has it.
    fn removed(
        &mut self,
        hp: &HostPlan,
        entry: &ManifestEntry,
        state: &HostState,
        secrets: &Secrets,
    ) {
        let seen = state.files.get(&entry.path).cloned().unwrap_or_default();
        if !seen.exists {
            return;
        }
        let service: Option<Service> =
            serde_json::from_value(serde_json::Value::String(entry.service.clone())).ok();
        let Some(service) = service else { return };
        let old = seen
            .content()
            .map(|c| secrets.mask_like(&c, ""))
            .unwrap_or_else(|| format!("(content not shown: {} bytes)\n", seen.size.unwrap_or(0)));
        if hp.services.contains(&service) {
            if !self.touched.contains(&service) {
                self.touched.push(service);
            }
        } else if !self.stopped.contains(&service) {
            self.stopped.push(service);
        }
        self.files.push(FileChange {
            path: entry.path.clone(),
            kind: FileChangeKind::Delete,
            service,
            diff: if state.originals.contains(&entry.path) {
                format!(
                    "# put back: the file {} had here before its first apply (kept then)\n",
                    hp.name()
                )
            } else {
                unified(&old, "", &entry.path, "a", NO_FILE)
            },
            observed_sha256: observed_sha(&seen),
            new_sha256: None,
            new_content: None,
            mode: entry.mode.clone(),
            owner: entry.owner.clone(),
            group: entry.group.clone(),
            carries_secret: true,
        });
    }
}

/// What happens to a planned file the host has as `seen`: None when nothing differs.
fn planned_kind(
    f: &ManagedFile,
    seen: &FileState,
    new_sha: &str,
    mode: &str,
) -> Option<FileChangeKind> {
    if !seen.exists {
        Some(FileChangeKind::Create)
    } else if seen.sha256.as_deref() != Some(new_sha) || seen.link.is_some() {
        Some(FileChangeKind::Modify)
    } else if seen.mode.as_deref() != Some(mode)
        || seen.owner.as_deref() != Some(f.owner.as_str())
        || seen.group.as_deref() != Some(f.group.as_str())
    {
        Some(FileChangeKind::Metadata)
    } else {
        None
    }
}

/// The packages to install and what happens to each service: the planned ones start
/// when not running, reload or restart when a file of theirs changed (not only its
/// mode or owner); a service whose role left the host stops, once its files are gone.
fn service_changes(
    hp: &HostPlan,
    state: &HostState,
    d: &FileDiff,
) -> (Vec<String>, Vec<ServiceChange>) {
    let mut install = Vec::new();
    let mut services = Vec::new();
    for &svc in &hp.services {
        let mut installed = true;
        for pkg in svc.packages() {
            if !state.packages.get(*pkg).copied().unwrap_or(true) {
                installed = false;
                install.push(pkg.to_string());
            }
        }
        let running = installed && state.services.get(svc.unit()).is_some_and(|s| s.running);
        let changed = d.touched.contains(&svc);
        let change = if !running {
            Some(ServiceChange {
                service: svc,
                action: ServiceAction::Start,
                reason: if installed {
                    "not running".into()
                } else {
                    "not installed".into()
                },
            })
        } else if changed {
            let only_metadata = d
                .files
                .iter()
                .filter(|f| f.service == svc)
                .all(|f| f.kind == FileChangeKind::Metadata);
            (!only_metadata).then(|| ServiceChange {
                service: svc,
                action: svc.on_change(),
                reason: "config changed".into(),
            })
        } else {
            None
        };
        services.extend(change);
    }
    for &svc in &d.stopped {
        if state.services.get(svc.unit()).is_some_and(|s| s.running) {
            services.push(ServiceChange {
                service: svc,
                action: ServiceAction::Stop,
                reason: "no longer planned on this host".into(),
            });
        }
    }
    (install, services)
}

/// The same manifest entries, in any order.
fn same_entries(a: &[ManifestEntry], b: &[ManifestEntry]) -> bool {
    let sorted = |v: &[ManifestEntry]| {
        let mut v = v.to_vec();
        v.sort_by(|x, y| x.path.cmp(&y.path));
        v
    };
    a.len() == b.len() && sorted(a) == sorted(b)
}

fn observed_sha(seen: &FileState) -> Option<String> {
    if seen.exists {
        seen.sha256.clone()
    } else {
        None
    }
}

/// Diffs every host of the plan that has an observed state.
pub fn diff(
    plan: &Plan,
    observed: &BTreeMap<String, HostState>,
    secrets: &Secrets,
) -> Result<Changes> {
    let hosts: Vec<HostChanges> = plan
        .hosts
        .iter()
        .filter_map(|hp| observed.get(hp.name()).map(|st| diff_host(hp, st, secrets)))
        .collect::<Result<_>>()?;
    let topology = topology(plan, observed, &hosts);
    let in_service = in_service(plan, observed);
    Ok(Changes {
        topology,
        hosts,
        in_service,
    })
}

/// The web servers some load balancer of the plan reported UP.
pub(crate) fn in_service(plan: &Plan, observed: &BTreeMap<String, HostState>) -> Vec<String> {
    let mut up: Vec<String> = plan
        .hosts
        .iter()
        .filter_map(|hp| observed.get(hp.name()))
        .filter_map(|st| st.haproxy.as_ref())
        .flat_map(|view| view.servers("web"))
        .filter(|(_, status, _)| status.starts_with("UP"))
        .map(|(server, ..)| server.to_string())
        .collect();
    up.sort();
    up.dedup();
    up
}

#[cfg(test)]
mod tests;
