//! Diffing: the rendered plan against what the hosts reported, into typed [`Changes`]
//! (files to create, modify or delete, services to reload, restart or start, packages
//! to install). Pure: no network; secrets are resolved for hashing and masked for display.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::boot::BootChange;
use crate::database::DbChange;
use crate::plan::{HostPlan, Init, Plan, Service, ServiceAction};
use crate::remote::agent::{FileState, HostState, ManifestEntry};
use crate::secrets::Secrets;

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

/// The shape of the stack changing: said first in a diff, and ordering the apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Topology {
    /// Hosts the tool has never applied to.
    pub new_hosts: Vec<String>,
    /// Web servers the load balancers do not have yet: added once they are ready.
    pub backends_added: Vec<String>,
    /// Web servers leaving the load balancers: drained first.
    pub backends_removed: Vec<String>,
    /// (host, service) pairs whose role left the host.
    pub services_stopped: Vec<(String, String)>,
    /// Replicas to seed from the primary.
    pub replicas_seeded: Vec<String>,
    /// Replicas whose database server was not running when observed (a replica role
    /// just added, or a server down): seeded once it runs, unless it replicates.
    #[serde(default)]
    pub replicas_checked: Vec<String>,
    /// Hosts that stop being replicas.
    #[serde(default)]
    pub replicas_removed: Vec<String>,
    /// Hosts removed from the inventory and named by --prune-host.
    #[serde(default)]
    pub pruned_hosts: Vec<String>,
}

impl Topology {
    pub fn is_empty(&self) -> bool {
        *self == Topology::default()
    }

    /// The order the steps run in, in words.
    pub fn order(&self) -> Vec<String> {
        let mut steps = Vec::new();
        if !self.backends_removed.is_empty() {
            steps.push(format!(
                "drain {} on every load balancer and wait for their sessions to end",
                self.backends_removed.join(", ")
            ));
        }
        if !self.replicas_removed.is_empty() {
            steps.push(format!(
                "stop and reset replication on {}",
                self.replicas_removed.join(", ")
            ));
        }
        steps.push("stage and validate every changed file on every host".into());
        let mut commit = "swap files and reload; restarts one host at a time".to_string();
        if !self.services_stopped.is_empty() {
            let s: Vec<String> = self
                .services_stopped
                .iter()
                .map(|(h, s)| format!("{s} on {h}"))
                .collect();
            commit.push_str(&format!("; stop {}", s.join(", ")));
        }
        steps.push(commit);
        if !self.replicas_seeded.is_empty() {
            steps.push(format!(
                "seed {} from the primary (streamed dump), replicate by GTID",
                self.replicas_seeded.join(", ")
            ));
        }
        if !self.replicas_checked.is_empty() {
            steps.push(format!(
                "once the database server of {} runs: seed it from the primary unless it already replicates",
                self.replicas_checked.join(", ")
            ));
        }
        steps.push("switch web servers to the new release, one at a time".into());
        if !self.backends_added.is_empty() {
            steps.push(format!(
                "only then reload the load balancers with {} in the pool",
                self.backends_added.join(", ")
            ));
        }
        steps
    }
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
    let mut files = Vec::new();
    let mut stopped: Vec<Service> = Vec::new();
    let mut manifest = Vec::new();
    let mut touched: Vec<Service> = Vec::new();
    let init = if state.init == "systemd" {
        Init::Systemd
    } else {
        Init::Sysv
    };
    for f in hp.files.iter().filter(|f| f.init.is_none_or(|i| i == init)) {
        let resolved = secrets.resolve(&f.content)?;
        let new_sha = sha256_hex(resolved.as_bytes());
        manifest.push(ManifestEntry {
            path: f.path.clone(),
            sha256: Some(new_sha.clone()),
            mode: f.mode_string(),
            owner: f.owner.clone(),
            group: f.group.clone(),
            service: f.service.unit().to_string(),
        });
        let seen = state.files.get(&f.path).cloned().unwrap_or_default();
        let mode = f.mode_string();
        let kind = if !seen.exists {
            Some(FileChangeKind::Create)
        } else if seen.sha256.as_deref() != Some(new_sha.as_str()) || seen.link.is_some() {
            Some(FileChangeKind::Modify)
        } else if seen.mode.as_deref() != Some(mode.as_str())
            || seen.owner.as_deref() != Some(f.owner.as_str())
            || seen.group.as_deref() != Some(f.group.as_str())
        {
            Some(FileChangeKind::Metadata)
        } else {
            None
        };
        let Some(kind) = kind else { continue };
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
        if !touched.contains(&f.service) {
            touched.push(f.service);
        }
        files.push(FileChange {
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
    }

    // Files this tool wrote earlier that are no longer in the plan.
    for entry in &state.manifest {
        if hp.file(&entry.path).is_some() {
            continue;
        }
        let seen = state.files.get(&entry.path).cloned().unwrap_or_default();
        if !seen.exists {
            continue;
        }
        let service: Option<Service> =
            serde_json::from_value(serde_json::Value::String(entry.service.clone())).ok();
        let Some(service) = service else { continue };
        let old = seen
            .content()
            .map(|c| secrets.mask_like(&c, ""))
            .unwrap_or_else(|| format!("(content not shown: {} bytes)\n", seen.size.unwrap_or(0)));
        if hp.services.contains(&service) {
            if !touched.contains(&service) {
                touched.push(service);
            }
        } else if !stopped.contains(&service) {
            stopped.push(service);
        }
        files.push(FileChange {
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
        let changed = touched.contains(&svc);
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
            let only_metadata = files
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
    // A service whose role left the host stops, once its files are gone.
    for &svc in &stopped {
        if state.services.get(svc.unit()).is_some_and(|s| s.running) {
            services.push(ServiceChange {
                service: svc,
                action: ServiceAction::Stop,
                reason: "no longer planned on this host".into(),
            });
        }
    }
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
        .filter_map(|st| st.haproxy.as_ref().and_then(|v| v.as_array()))
        .flatten()
        .filter(|s| {
            s["backend"] == "web" && s["status"].as_str().is_some_and(|x| x.starts_with("UP"))
        })
        .filter_map(|s| s["server"].as_str().map(str::to_string))
        .collect();
    up.sort();
    up.dedup();
    up
}

/// What changes in the stack's shape, from the plan and what the hosts report.
fn topology(
    plan: &Plan,
    observed: &BTreeMap<String, HostState>,
    hosts: &[HostChanges],
) -> Topology {
    use crate::inventory::Role;
    // The inventory's web servers, not only those of this run: `--limit lb` must not
    // read as every backend leaving.
    let planned: Vec<&str> = plan.backends.iter().map(String::as_str).collect();
    let mut t = Topology::default();
    for hp in &plan.hosts {
        let Some(st) = observed.get(hp.name()) else {
            continue;
        };
        if st.manifest.is_empty() && st.last_history.is_none() {
            t.new_hosts.push(hp.name().to_string());
        }
        if !hp.host.has(Role::Lb) {
            continue;
        }
        let Some(servers) = st.haproxy.as_ref().and_then(|v| v.as_array()) else {
            continue;
        };
        let serving: Vec<&str> = servers
            .iter()
            .filter(|s| s["backend"] == "web")
            .filter_map(|s| s["server"].as_str())
            .collect();
        if serving.is_empty() {
            continue; // not configured by the tool yet
        }
        for w in &planned {
            if !serving.contains(w) && !t.backends_added.iter().any(|x| x == w) {
                t.backends_added.push(w.to_string());
            }
        }
        for s in serving {
            if !planned.contains(&s) && !t.backends_removed.iter().any(|x| x == s) {
                t.backends_removed.push(s.to_string());
            }
        }
    }
    for hc in hosts {
        for s in hc
            .services
            .iter()
            .filter(|s| s.action == ServiceAction::Stop)
        {
            t.services_stopped
                .push((hc.host.clone(), s.service.unit().to_string()));
        }
        if matches!(hc.db, Some(DbChange::SeedReplica { .. })) {
            t.replicas_seeded.push(hc.host.clone());
        }
        if matches!(hc.db, Some(DbChange::CheckReplica { .. })) {
            t.replicas_checked.push(hc.host.clone());
        }
        if matches!(hc.db, Some(DbChange::RemoveReplica { .. })) {
            t.replicas_removed.push(hc.host.clone());
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::agent::HostState;

    #[test]
    fn a_created_or_deleted_file_is_diffed_against_dev_null_alone() {
        let created = unified("", "x\n", "/etc/nginx/nginx.conf", NO_FILE, "b");
        assert!(
            created.starts_with("--- /dev/null\n+++ b/etc/nginx/nginx.conf\n"),
            "{created}"
        );
        let deleted = unified("x\n", "", "/etc/nginx/nginx.conf", "a", NO_FILE);
        assert!(
            deleted.starts_with("--- a/etc/nginx/nginx.conf\n+++ /dev/null\n"),
            "{deleted}"
        );
    }

    /// A load balancer that has applied before, HAProxy serving these web servers.
    fn balancer_serving(servers: &[&str]) -> HostState {
        serde_json::from_value(serde_json::json!({
            "init": "sysv",
            "hostname": "lb-01",
            "files": {},
            "last_history": {"id": "earlier"},
            "haproxy": servers
                .iter()
                .map(|s| serde_json::json!({"backend": "web", "server": s}))
                .collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn backends_leave_and_join_by_the_inventory_not_by_the_hosts_of_the_run() {
        let mut plan = crate::render::lab_plan();
        plan.hosts.retain(|h| h.name() == "lb-01"); // --limit lb
        let observed =
            BTreeMap::from([("lb-01".to_string(), balancer_serving(&["web-01", "web-02"]))]);
        assert_eq!(topology(&plan, &observed, &[]), Topology::default());

        // A server HAProxy has that the inventory dropped leaves; one it lacks joins.
        let observed =
            BTreeMap::from([("lb-01".to_string(), balancer_serving(&["web-01", "web-03"]))]);
        let t = topology(&plan, &observed, &[]);
        assert_eq!(t.backends_removed, ["web-03"]);
        assert_eq!(t.backends_added, ["web-02"]);
    }

    #[test]
    fn a_replica_whose_server_was_down_is_part_of_the_topology() {
        let plan = crate::render::lab_plan();
        let hc: HostChanges = serde_json::from_value(serde_json::json!({
            "host": "web-02", "files": [], "services": [], "install": [],
            "db": {"action": "check-replica", "from": "web-01"},
            "create_users": [], "release": null, "record_manifest": false, "boot": [],
        }))
        .unwrap();
        let t = topology(&plan, &BTreeMap::new(), &[hc]);
        assert_eq!(t.replicas_checked, ["web-02"]);
        assert!(!t.is_empty(), "the diff prints a topology section");
        assert!(t
            .order()
            .iter()
            .any(|s| s.contains("once the database server of web-02 runs")));
    }

    #[test]
    fn only_servers_up_at_a_balancer_count_as_in_service() {
        let plan = crate::render::lab_plan();
        let mut lb = balancer_serving(&["web-01", "web-02"]);
        lb.haproxy = Some(serde_json::json!([
            {"backend": "web", "server": "web-01", "status": "UP"},
            {"backend": "web", "server": "web-02", "status": "DOWN"},
            {"backend": "stats", "server": "web-03", "status": "UP"},
        ]));
        let observed = BTreeMap::from([("lb-01".to_string(), lb)]);
        assert_eq!(in_service(&plan, &observed), ["web-01"]);
        // A fresh balancer (the distribution's HAProxy, no `web` backend): nobody.
        let mut fresh = balancer_serving(&[]);
        fresh.haproxy = Some(serde_json::json!([]));
        let observed = BTreeMap::from([("lb-01".to_string(), fresh)]);
        assert!(in_service(&plan, &observed).is_empty());
    }
}
