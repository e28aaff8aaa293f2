//! What observe reads of a load balancer's HAProxy (the `haproxy` field of the observe
//! answer; the agent's haproxy_observe over the runtime API's `show stat`), typed: the
//! diff (who is in service), the topology (backends added or removed) and `status`
//! read it from here.

use serde::{Deserialize, Serialize};

/// HAProxy's runtime API as observe read it (`show stat`, the agent's haproxy_observe):
/// its rows, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HaproxyView {
    Rows(Vec<HaproxyRow>),
    Unreadable { error: String },
}

/// One row of [`HaproxyView`]: a backend's server or a frontend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HaproxyRow {
    Server {
        backend: String,
        server: String,
        /// UP, DOWN, MAINT, "UP 1/3" ... as HAProxy says.
        status: Option<String>,
        #[serde(default)]
        sessions: u64,
        /// The last health check's status (L4OK, L7STS ...).
        #[serde(default)]
        check: String,
        #[serde(default)]
        backup: bool,
    },
    Frontend {
        frontend: String,
        /// OPEN, STOP or FULL.
        status: Option<String>,
        #[serde(default)]
        sessions: u64,
    },
}

impl HaproxyView {
    /// The rows (none when the API could not be read).
    pub fn rows(&self) -> &[HaproxyRow] {
        match self {
            HaproxyView::Rows(rows) => rows,
            HaproxyView::Unreadable { .. } => &[],
        }
    }

    /// The servers of backend `backend`: (name, status, backup).
    pub fn servers<'a>(
        &'a self,
        backend: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, bool)> {
        self.rows().iter().filter_map(move |r| match r {
            HaproxyRow::Server {
                backend: b,
                server,
                status,
                backup,
                ..
            } if b == backend => Some((server.as_str(), status.as_deref().unwrap_or("?"), *backup)),
            _ => None,
        })
    }

    /// The status of frontend `name`, if HAProxy has it (Some("?") without a status).
    pub fn frontend(&self, name: &str) -> Option<&str> {
        self.rows().iter().find_map(|r| match r {
            HaproxyRow::Frontend {
                frontend, status, ..
            } if frontend == name => Some(status.as_deref().unwrap_or("?")),
            _ => None,
        })
    }
}
