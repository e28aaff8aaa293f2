//! What kind of failure ended a command: one [`ErrorKind`] per failure class, carried
//! through `anyhow` (a [`Tagged`] error where the failure is known, or the agent's own
//! [`AgentError`](crate::remote::agent::AgentError)), and mapped in ONE place to the exit
//! code and to `--json` (`{"error": {"kind", "host", "message"}}`).

use std::fmt;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::EX_USAGE;
use crate::remote::agent::AgentError;

/// A failure class a script can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The command line itself (exit 64).
    Usage,
    /// The inventory: a file, line and field.
    Inventory,
    /// A template or rendered config the validators refuse (`check`, stage).
    Validation,
    /// A secret that is missing or unreadable.
    Secret,
    /// A host that cannot be reached or stopped answering.
    Connect,
    /// A host key not in known_hosts, or different.
    HostKey,
    /// Another run holds a host's lock.
    Lock,
    /// A file changed on a host since it was observed.
    Conflict,
    /// A service action (reload, restart, start) or its proof that it runs the new config.
    Reload,
    /// A web server that did not come back healthy at the load balancers.
    Health,
    /// A port the stack needs held by another process.
    PortHeld,
    /// The database: replication, a restore, a promotion.
    Database,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The process exit code of a failure of this kind (README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage => EX_USAGE,
            _ => 1,
        }
    }

    /// The kind of an agent's error (`kind` in its answer, src/agent).
    fn of_agent(kind: &str) -> ErrorKind {
        match kind {
            "locked" => ErrorKind::Lock,
            "validation" => ErrorKind::Validation,
            "service" => ErrorKind::Reload,
            "conflict" => ErrorKind::Conflict,
            "gone" => ErrorKind::Connect,
            "db" => ErrorKind::Database,
            _ => ErrorKind::Other,
        }
    }
}

/// An error whose kind (and host) is known where it happened. Displays exactly as the
/// error it wraps, so messages do not change: only the kind travels with it.
#[derive(Debug)]
pub struct Tagged {
    pub kind: ErrorKind,
    pub host: Option<String>,
    inner: anyhow::Error,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for Tagged {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

/// `e` tagged with its kind and host (an error already tagged keeps its first tag).
pub fn tag(e: anyhow::Error, kind: ErrorKind, host: Option<&str>) -> anyhow::Error {
    if found(&e).is_some() {
        return e;
    }
    anyhow::Error::new(Tagged {
        kind,
        host: host.map(str::to_string),
        inner: e,
    })
}

/// [`tag`] on a `Result`.
pub trait Kind<T> {
    fn kind(self, kind: ErrorKind, host: Option<&str>) -> anyhow::Result<T>;
}

impl<T> Kind<T> for anyhow::Result<T> {
    fn kind(self, kind: ErrorKind, host: Option<&str>) -> anyhow::Result<T> {
        self.map_err(|e| tag(e, kind, host))
    }
}

/// One host's part of a failure that several hosts may share.
pub struct HostFailure {
    pub host: String,
    /// The line that names the host and the cause.
    pub line: String,
    pub kind: ErrorKind,
}

impl HostFailure {
    pub fn new(host: &str, line: String, cause: &anyhow::Error) -> HostFailure {
        HostFailure {
            host: host.to_string(),
            line,
            kind: kind_of(cause).0,
        }
    }
}

/// The failures of several hosts as one error: `head` (if any), then a line per host;
/// of the first failure's kind, naming its host when it is the only one.
pub fn of_hosts(head: Option<&str>, failures: &[HostFailure]) -> anyhow::Error {
    let lines: Vec<&str> = failures.iter().map(|f| f.line.as_str()).collect();
    let text = match head {
        Some(h) => format!("{h}\n{}", lines.join("\n")),
        None => lines.join("\n"),
    };
    let kind = failures.first().map_or(ErrorKind::Other, |f| f.kind);
    let host = match failures {
        [one] => Some(one.host.as_str()),
        _ => None,
    };
    tag(anyhow::anyhow!(text), kind, host)
}

/// The usage error `message` (exit 64).
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    tag(anyhow::anyhow!("{message}"), ErrorKind::Usage, None)
}

fn found(e: &anyhow::Error) -> Option<(ErrorKind, Option<String>)> {
    e.chain().find_map(|c| {
        if let Some(t) = c.downcast_ref::<Tagged>() {
            return Some((t.kind, t.host.clone()));
        }
        c.downcast_ref::<AgentError>()
            .map(|a| (ErrorKind::of_agent(&a.kind), a.host.clone()))
    })
}

/// The kind of `e` and the host it names (Other and none when nothing says).
pub fn kind_of(e: &anyhow::Error) -> (ErrorKind, Option<String>) {
    found(e).unwrap_or((ErrorKind::Other, None))
}

/// `e` as `--json` carries it: `{"kind", "host", "message"}` (the whole chain).
pub fn to_json(e: &anyhow::Error) -> Value {
    let (kind, host) = kind_of(e);
    json!({"kind": kind, "host": host, "message": format!("{e:#}")})
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_tag_changes_no_message_and_survives_context() {
        let inner = anyhow::anyhow!("connection refused").context("web-02: cannot connect");
        let plain = format!("{inner:#}");
        let e = tag(inner, ErrorKind::Connect, Some("web-02"));
        assert_eq!(format!("{e:#}"), plain);
        let e = Err::<(), _>(e).context("applying").unwrap_err();
        assert_eq!(kind_of(&e), (ErrorKind::Connect, Some("web-02".into())));
        assert_eq!(
            to_json(&e),
            json!({"kind": "connect", "host": "web-02",
                   "message": "applying: web-02: cannot connect: connection refused"})
        );
        // The first tag wins: an outer step does not rename the cause.
        let e = tag(e, ErrorKind::Other, None);
        assert_eq!(kind_of(&e).0, ErrorKind::Connect);
    }

    #[test]
    fn an_agents_error_keeps_its_kind_and_host() {
        let a = AgentError {
            kind: "locked".into(),
            message: "held by run r1".into(),
            path: None,
            service: None,
            output: None,
            host: Some("lb-01".into()),
        };
        let e = Err::<(), _>(anyhow::Error::new(a))
            .context("lb-01: staging")
            .unwrap_err();
        assert_eq!(kind_of(&e), (ErrorKind::Lock, Some("lb-01".into())));
        assert_eq!(kind_of(&anyhow::anyhow!("x")), (ErrorKind::Other, None));
    }

    #[test]
    fn usage_errors_exit_64_and_the_rest_1() {
        assert_eq!(kind_of(&usage("no")).0.exit_code(), 64);
        for k in [ErrorKind::Inventory, ErrorKind::Lock, ErrorKind::Other] {
            assert_eq!(k.exit_code(), 1);
        }
    }
}
