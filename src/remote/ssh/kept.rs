//! Connections kept between runs (`--persist`): the record of a kept master per
//! destination, and the kept agent (daemon.py) reached through a forwarded Unix socket
//! with its token, so a run needs no exec request and no Python start.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use openssh::Session;
use tokio::io::AsyncWriteExt;

use super::{exchange, Failed, SshRemote};
use crate::inventory::Host;
use crate::remote::{agent, capped, ExecOutput, Remote};

/// The kept agent (daemon.py), reached through a Unix socket that the kept master
/// forwards to the host: no exec request and no Python start per run.
#[derive(Default)]
pub(super) enum Kept {
    #[default]
    Untried,
    Connected(KeptConnection),
    Unavailable,
}

pub(super) struct KeptConnection {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

/// Whether anything listens on the local end of a forward (the master's listener).
async fn kept_connect_probe(local: &std::path::Path) -> std::io::Result<()> {
    tokio::net::UnixStream::connect(local).await.map(drop)
}

/// Connects to the kept agent through the local end of the forward and sends its token
/// (daemon.py greets only after it); None unless it greets.
async fn kept_connect(local: &std::path::Path, token: &str) -> Option<KeptConnection> {
    let limit = Duration::from_secs(5);
    let stream = tokio::time::timeout(limit, tokio::net::UnixStream::connect(local))
        .await
        .ok()?
        .ok()?;
    let (r, mut writer) = stream.into_split();
    writer
        .write_all(format!("{token}\n").as_bytes())
        .await
        .ok()?;
    let mut reader = tokio::io::BufReader::new(r);
    let mut greeting = Vec::new();
    tokio::time::timeout(limit, capped::read_line(&mut reader, &mut greeting, 64))
        .await
        .ok()?
        .ok()?;
    greeting
        .starts_with(b"foobar-agent")
        .then_some(KeptConnection { reader, writer })
}

/// Writes a file only this user may read (created 0600, replaced whole).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Where kept connections are recorded: one small file per destination naming the
/// control socket of its master.
pub(super) fn persist_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("foobar-infra/ssh")
}

/// The identity of a connection: everything that decides where and how it logs in.
pub(super) fn persist_key(host: &Host) -> String {
    use sha2::{Digest, Sha256};
    let id = format!(
        "{}@{}:{}|{:?}|{:?}|{:?}",
        host.ssh.user,
        host.address,
        host.ssh.port,
        host.ssh.known_hosts,
        host.ssh.identity_file,
        host.ssh.config_file
    );
    hex::encode(&Sha256::digest(id.as_bytes())[..12])
}

/// A master kept by an earlier run for the same destination, if it still answers.
pub(super) async fn resume(host: &Host) -> Option<Session> {
    let record = persist_dir().join(persist_key(host));
    let ctl = PathBuf::from(std::fs::read_to_string(&record).ok()?.trim());
    if !ctl.exists() {
        let _ = std::fs::remove_file(&record);
        return None;
    }
    let session = Session::resume_mux(ctl.into_boxed_path(), None);
    if session.check().await.is_ok() {
        Some(session)
    } else {
        let _ = std::fs::remove_file(&record);
        None
    }
}

impl SshRemote {
    /// The local end of the forward to this host's kept agent (beside the master's record).
    fn kept_socket(&self) -> PathBuf {
        persist_dir().join(format!(
            "{}.{}.agent",
            persist_key(&self.host),
            &agent::agent_id()[..8]
        ))
    }

    /// Reaches the kept agent: through the existing forward; else starts it (one remote
    /// command) and forwards the local socket to it through the master. None: not
    /// available (e.g. sshd forbids socket forwarding); the run uses a serving agent.
    async fn kept_reach(&self, idle: u64) -> Option<KeptConnection> {
        let local = self.kept_socket();
        // The daemon's token (daemon.py), kept beside the forward (0700 directory, 0600).
        let token_file = local.with_extension("token");
        let forwarded = local.exists();
        if forwarded {
            let token = std::fs::read_to_string(&token_file).unwrap_or_default();
            if let Some(c) = kept_connect(&local, token.trim()).await {
                self.printer
                    .detail("Reusing", format!("{} (kept agent)", self.name));
                return Some(c);
            }
        }
        let (remote, token) = match self.kept_start(idle).await {
            Ok(p) => p,
            Err(e) => {
                self.printer.detail(
                    "Agent",
                    format!("{}: no kept agent ({e:#}); one for this run", self.name),
                );
                return None;
            }
        };
        // A forward the master still holds (its agent had ended) is reused as it is.
        if !forwarded || kept_connect_probe(&local).await.is_err() {
            let _ = std::fs::remove_file(&local);
            let asked = self
                .session
                .request_port_forward(
                    openssh::ForwardType::Local,
                    openssh::Socket::UnixSocket {
                        path: local.clone().into(),
                    },
                    openssh::Socket::UnixSocket {
                        path: PathBuf::from(remote).into(),
                    },
                )
                .await;
            if let Err(e) = asked {
                self.printer.detail(
                    "Agent",
                    format!(
                        "{}: the master cannot forward to the kept agent ({e}); one for this run",
                        self.name
                    ),
                );
                return None;
            }
        }
        if let Err(e) = write_private(&token_file, token.as_bytes()) {
            self.printer.detail(
                "Agent",
                format!(
                    "{}: cannot keep the agent's token ({e}); one for this run",
                    self.name
                ),
            );
            return None;
        }
        kept_connect(&local, &token).await
    }

    /// Starts the kept agent on the host (or finds it running): its socket's path there
    /// and the token each connection to it must send first.
    async fn kept_start(&self, idle: u64) -> Result<(String, String)> {
        let idle = idle.to_string();
        let argv = agent::argv(&["listen", agent::agent_id(), &idle]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self
            .exec(&argv, agent::one_shot_stdin(b""), "kept agent")
            .await?;
        if serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err() {
            bail!(
                "exit {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let answer = crate::protocol::kept::Listening::parse(&out.stdout)?;
        Ok((answer.socket, answer.token))
    }

    /// One request to the kept agent; None when there is none (see `kept_reach`).
    pub(super) async fn kept_request(
        &self,
        request: &[u8],
        op: &str,
    ) -> Option<Result<ExecOutput>> {
        let idle = self.persist?;
        let mut kept = self.kept.lock().await;
        if matches!(*kept, Kept::Untried) {
            *kept = match self.kept_reach(idle).await {
                Some(c) => Kept::Connected(c),
                None => Kept::Unavailable,
            };
        }
        let Kept::Connected(c) = &mut *kept else {
            return None;
        };
        self.printer.detail("Agent", format!("{} {op}", self.name));
        match exchange(&mut c.writer, &mut c.reader, request).await {
            Ok(answer) => Some(Ok(answer)),
            Err(Failed::TooLarge(e)) => {
                *kept = Kept::Unavailable;
                Some(Err(Failed::too_large(e, &self.name, op)))
            }
            Err(Failed::Ended(why, line)) => {
                // Whether the request ran is unknown: it fails, and is not sent again.
                *kept = Kept::Unavailable;
                Some(Ok(ExecOutput {
                    status: None,
                    stdout: line,
                    stderr: format!("the kept agent closed the connection ({why})").into_bytes(),
                }))
            }
        }
    }
}
