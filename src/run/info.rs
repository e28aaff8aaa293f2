//! Who runs an apply and when ([`RunInfo`], sent with locks and history records),
//! and the UTC date text it is stamped with.

use std::collections::BTreeMap;

use crate::diff::HostChanges;
use crate::inventory::Inventory;
use crate::protocol::run::{HistoryBoot, HistoryFile, HistoryRecord, HistoryService, LockOwner};

/// Who runs this apply, for locks and history.
pub struct RunInfo {
    pub run_id: String,
    pub user: String,
    pub started: f64,
    /// Seconds a host's stage waits for another run's live lock to be freed (never
    /// taken over).
    pub lock_timeout: u64,
    pub inventory: String,
    pub inventory_hash: String,
    pub git_commit: Option<String>,
    /// The inventory's hosts and addresses, recorded in the history (where
    /// `--prune-host NAME` finds a removed host's address).
    pub hosts: BTreeMap<String, String>,
}

impl RunInfo {
    /// For a run with nothing to change (never sent to a host).
    pub fn none() -> RunInfo {
        RunInfo {
            run_id: String::new(),
            user: String::new(),
            started: 0.0,
            lock_timeout: 0,
            inventory: String::new(),
            inventory_hash: String::new(),
            git_commit: None,
            hosts: BTreeMap::new(),
        }
    }

    pub fn new(inv: &Inventory, lock_timeout: u64) -> RunInfo {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .or_else(|| {
                let out = std::process::Command::new("id").arg("-un").output().ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "unknown".into());
        let machine = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        RunInfo {
            run_id: format!("{}-{}", now.as_secs(), std::process::id()),
            user: format!("{user}@{machine}"),
            started: now.as_secs_f64(),
            lock_timeout,
            inventory: inv.path.display().to_string(),
            inventory_hash: inv.source_hash.clone(),
            git_commit: git_commit(&inv.path),
            hosts: inv
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.address.to_string()))
                .collect(),
        }
    }

    pub(crate) fn lock(&self) -> LockOwner {
        LockOwner {
            owner: self.user.clone(),
            pid: std::process::id(),
            started: self.started,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: self.run_id.clone(),
        }
    }

    pub(crate) fn history(&self, hc: &HostChanges) -> HistoryRecord {
        let files = hc
            .files
            .iter()
            .map(|f| HistoryFile {
                path: f.path.clone(),
                change: f.kind,
            })
            .collect();
        let services = hc
            .services
            .iter()
            .map(|s| HistoryService {
                service: s.service,
                action: s.action,
            })
            .collect();
        let boot = hc
            .boot
            .iter()
            .map(|b| HistoryBoot {
                service: b.service,
                action: b.action,
            })
            .collect();
        HistoryRecord {
            time: chrono_now(),
            user: self.user.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: self.run_id.clone(),
            host: hc.host.clone(),
            inventory: self.inventory.clone(),
            inventory_hash: self.inventory_hash.clone(),
            git_commit: self.git_commit.clone(),
            files,
            services,
            hosts: self.hosts.clone(),
            boot,
            result: None,
        }
    }
}

/// The commit of the git repository holding the inventory, if any.
fn git_commit(inventory: &std::path::Path) -> Option<String> {
    let dir = inventory
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// UTC time as ISO 8601, without a date crate.
pub fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    iso_utc(secs)
}

/// Unix seconds as ISO 8601 UTC.
pub fn iso_utc(secs: u64) -> String {
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
