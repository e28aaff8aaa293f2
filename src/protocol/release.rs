//! The application's operations (src/agent/foobar_agent/release.py): uploading and switching
//! releases, a backend server's state on a load balancer, and the host's history.

use serde_json::Value;

use super::shape::{names, Shape};
use super::Operation;

wire! {
    /// `release-upload`: unpacks a release (a tar) into `ROOT/releases/ID`, unless it
    /// is there already; written beside, then renamed.
    pub struct ReleaseUpload {
        /// The release root.
        pub root: String,
        /// The release id: a content hash, `[0-9a-f]{8,64}`.
        pub id: String,
        /// The release's files as a tar, base64.
        pub tar_b64: String,
    }
}

impl Operation for ReleaseUpload {
    const OP: &'static str = "release-upload";
    type Answer = Uploaded;
}

answer! {
    pub struct Uploaded {
        /// It was there already.
        pub already: bool,
    }
}

wire! {
    /// `release-switch`: points `ROOT/current` at release `id`, restarts the
    /// application server and waits until its health check answers with the new
    /// release; on failure it switches back. Keeps the newest `keep` releases.
    pub struct ReleaseSwitch {
        pub root: String,
        pub id: String,
        pub keep: u64,
        /// The application server's unit.
        pub service: String,
        pub check: HealthCheck,
    }
}

impl Operation for ReleaseSwitch {
    const OP: &'static str = "release-switch";
    type Answer = Switched;
}

wire! {
    /// An HTTP GET on 127.0.0.1 that must answer 200 (with the release id in it).
    pub struct HealthCheck {
        pub port: u16,
        pub path: String,
        /// The `Host` header.
        pub host: String,
        pub timeout_s: u64,
    }
}

answer! {
    pub struct Switched {
        /// The release current before.
        pub previous: Option<String>,
        pub current: String,
        /// Releases removed.
        pub pruned: Vec<String>,
    }
}

/// A backend server's admin state on HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// No new connections; wait until its sessions end.
    Drain,
    /// Back in the pool; wait until its health check says UP.
    Ready,
    /// Maintenance.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Drain => "drain",
            ServerState::Ready => "ready",
            ServerState::Maint => "maint",
        }
    }
}

impl Shape for ServerState {
    fn shape() -> Value {
        names(&["drain", "ready", "maint"])
    }
}

wire! {
    /// `haproxy-server`: sets `backend/server` to `state` over HAProxy's runtime API
    /// (saved for the next reload), then waits up to `timeout_s` for it to take.
    pub struct HaproxyServer {
        pub backend: String,
        pub server: String,
        pub state: ServerState,
        pub timeout_s: u64,
    }
}

impl Operation for HaproxyServer {
    const OP: &'static str = "haproxy-server";
    type Answer = ServerStatus;
}

answer! {
    pub struct ServerStatus {
        /// The server is not in this balancer's pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub absent: Option<bool>,
        /// HAProxy's status of it (`UP`, `DRAIN`, `MAINT`, ...).
        pub status: Option<String>,
        /// Its current sessions.
        pub sessions: u64,
        /// After a drain: HAProxy processes of an earlier config still running (they
        /// may still send it requests they accepted before a reload); 0 once drained.
        pub old_processes: u64,
    }
}

wire! {
    /// `history`: the host's last `last` apply records, oldest first.
    pub struct History {
        pub last: u64,
    }
}

impl Operation for History {
    const OP: &'static str = "history";
    type Answer = HistoryRecords;
}

answer! {
    pub struct HistoryRecords {
        /// history.jsonl's records as written (the tool's record with the agent's
        /// `result`, `message` and times).
        pub records: Vec<Value>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_server_state_is_named_as_haproxy_names_it() {
        for s in [ServerState::Drain, ServerState::Ready, ServerState::Maint] {
            assert_eq!(json!(s), json!(s.as_str()));
        }
    }
}
