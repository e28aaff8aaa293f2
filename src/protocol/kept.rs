//! The kept agent's start (`python3 -I -S -c BOOTSTRAP ID LENGTH listen ID SECONDS`,
//! src/agent/foobar_agent/daemon.py): not an op of the agent's `OPS` table but a mode of
//! the agent, with one answer line; src/remote/ssh/kept.rs reads it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The daemon listens (started now, or found running): where, and the token every
/// connection to it must send first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listening {
    pub ok: bool,
    /// The Unix socket's path on the host.
    pub socket: String,
    /// 32 random bytes, hex.
    pub token: String,
}

impl Listening {
    /// The answer line as the agent printed it, checked: an absolute socket path and a
    /// token of 64 hex digits (it goes to the daemon as the first line of a connection).
    pub fn parse(stdout: &[u8]) -> Result<Listening> {
        let l: Listening = serde_json::from_slice(stdout).context("the kept agent's answer")?;
        if !l.ok
            || !l.socket.starts_with('/')
            || l.socket.chars().any(char::is_control)
            || l.token.len() != 64
            || !l.token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            bail!("no socket and token in the kept agent's answer");
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_a_socket_path_and_a_hex_token() {
        let token = "ab".repeat(32);
        let ok = format!(
            r#"{{"ok": true, "socket": "/run/foobar-infra/root/agent-1.0.sock", "token": "{token}"}}"#
        );
        assert_eq!(Listening::parse(ok.as_bytes()).unwrap().token, token);
        for bad in [
            format!(r#"{{"ok": true, "socket": "relative.sock", "token": "{token}"}}"#),
            format!(
                r#"{{"ok": true, "socket": "/s", "token": "{}"}}"#,
                "zz".repeat(32)
            ),
            r#"{"ok": true, "socket": "/s", "token": "ab"}"#.to_string(),
            format!(r#"{{"ok": false, "socket": "/s", "token": "{token}"}}"#),
            format!(r#"{{"ok": true, "socket": "/s", "token": "{token}", "more": 1}}"#),
            "Traceback ...".to_string(),
        ] {
            assert!(Listening::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
