//! SSH transport with the openssh crate: one multiplexed master connection per host,
//! strict host-key checking (fail closed), the user's ssh config and agent respected.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

mod kept;

use super::{agent, capped, Check, Checked, ExecOutput, Input, Remote, Sink};
use crate::inventory::Host;
use crate::output::Printer;
use kept::{persist_dir, persist_key, resume, Kept};

/// Seconds between SSH keepalives on every connection; ssh gives up on a host after three
/// unanswered ones (ServerAliveCountMax), so a host that stops answering fails its step
/// within [`LOST_AFTER_S`] (docs/DESIGN.md: "A host lost mid-run").
pub const KEEPALIVE_S: u64 = 5;
pub const LOST_AFTER_S: u64 = 3 * KEEPALIVE_S;

/// A connected host.
pub struct SshRemote {
    name: String,
    host: Host,
    sudo: bool,
    session: Arc<Session>,
    /// Keep the master connection (and the agent) this many idle seconds after the run
    /// (`--persist`).
    persist: Option<u64>,
    printer: Arc<Printer>,
    /// Remote commands run on this connection (for -v and tests).
    pub commands: AtomicUsize,
    /// The agent serving this run's requests, started by the first one.
    agent: tokio::sync::Mutex<Option<AgentProcess>>,
    /// With `--persist`: the agent kept on the host between runs, if reachable.
    kept: tokio::sync::Mutex<Kept>,
    /// A connection to the master's control socket, open while this process lives: the
    /// master counts it as a client, so it never idles out during the run, and once it
    /// closes (the run's end, or the kernel's at a `kill -9`) the master ends after
    /// [`MASTER_LINGER_S`] (or `--persist`'s seconds).
    hold: Option<std::os::unix::net::UnixStream>,
}

/// How long a master outlives this process (without `--persist`): its ControlPersist.
pub const MASTER_LINGER_S: usize = 5;

/// Holds the master open for this process's life (see [`SshRemote::hold`]).
fn hold_master(session: &Session) -> Option<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(session.control_socket()).ok()
}

/// Why an exchange with an agent brought no whole answer.
enum Failed {
    /// The answer passed [`capped::MAX_FROM_HOST`]: refused, the agent abandoned.
    TooLarge(std::io::Error),
    /// The agent ended (or the connection broke): why, and the partial line.
    Ended(String, Vec<u8>),
}

impl Failed {
    /// The error of an answer past the limit, naming host and operation.
    fn too_large(e: std::io::Error, host: &str, op: &str) -> anyhow::Error {
        anyhow!("{host}: the agent's answer to {op}: {e}")
    }
}

/// Sends one framed request to an agent and reads its answer line (at most
/// [`capped::MAX_FROM_HOST`]): the answer as a command's output, or why there is none.
async fn exchange<W, R>(
    writer: &mut W,
    reader: &mut R,
    request: &[u8],
) -> std::result::Result<ExecOutput, Failed>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    let exchanged = async {
        writer.write_all(&agent::framed(request)).await?;
        writer.flush().await?;
        capped::read_line(reader, &mut line, capped::MAX_FROM_HOST).await
    }
    .await;
    match exchanged {
        Ok(n) if n > 0 && line.ends_with(b"\n") => Ok(ExecOutput {
            status: Some(0),
            stdout: line,
            stderr: Vec::new(),
        }),
        Ok(_) => Err(Failed::Ended(
            "end of output before a whole answer".into(),
            line,
        )),
        Err(e) if capped::is_too_large(&e) => Err(Failed::TooLarge(e)),
        Err(e) => Err(Failed::Ended(e.to_string(), line)),
    }
}

/// An agent started with `serve`: framed requests in, one answer line each out.
struct AgentProcess {
    child: openssh::Child<Arc<Session>>,
    stdin: openssh::ChildStdin,
    stdout: tokio::io::BufReader<openssh::ChildStdout>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl AgentProcess {
    /// Closes its stdin (the agent exits at end of input) and returns its exit status
    /// and what it wrote to stderr.
    async fn finish(self) -> (Option<i32>, Vec<u8>) {
        drop(self.stdin);
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|s| s.code());
        let stderr = self.stderr.await.unwrap_or_default();
        (status, stderr)
    }
}

/// Where persistent control sockets live when connections are kept between runs.
pub fn control_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Opens the master connection to one host (or, with `persist`, reuses the one an
/// earlier run kept, and keeps this one open for `persist` idle seconds).
pub async fn connect(host: &Host, printer: Arc<Printer>) -> Result<SshRemote> {
    connect_with(host, printer, None).await
}

pub async fn connect_with(
    host: &Host,
    printer: Arc<Printer>,
    persist: Option<u64>,
) -> Result<SshRemote> {
    if persist.is_some() {
        if let Some(session) = resume(host).await {
            printer.detail("Reusing", format!("{} (kept connection)", host.name));
            return Ok(SshRemote::new(host, session, persist, printer));
        }
    }
    let mut b = session_builder(host);
    // The TCP connector (src/remote/connector.rs) as ProxyCommand, under the user's config.
    let connector = super::connector::prepare(&host.ssh);
    if let Some(c) = &connector {
        b.config_file(c.config());
    } else if let Some(c) = &host.ssh.config_file {
        b.config_file(c);
    }
    if let Some(secs) = persist {
        let dir = persist_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let idle = std::num::NonZeroUsize::new(secs.max(1) as usize).expect("non-zero");
        b.control_directory(&dir)
            .control_persist(openssh::ControlPersist::IdleFor(idle));
    }
    let target = format!("{}@{}:{}", host.ssh.user, host.address, host.ssh.port);
    printer.detail("Connecting", format!("{} ({target})", host.name));
    let session = b
        .connect_mux(host.address.to_string())
        .await
        .map_err(|e| {
            // ssh only sees its proxy's connection close: the connector says why.
            match connector.as_ref().and_then(|c| c.error()) {
                Some(why) => anyhow!("{why}"),
                None => anyhow!(
                    "{}",
                    String::from_utf8_lossy(&named_peer(describe(&e).into_bytes(), host))
                ),
            }
        })
        .with_context(|| format!("{}: cannot connect to {target}", host.name))
        .map_err(|e| {
            let kind = if format!("{e:#}").contains("host key verification failed") {
                crate::error::ErrorKind::HostKey
            } else {
                crate::error::ErrorKind::Connect
            };
            crate::error::tag(e, kind, Some(&host.name))
        })?;
    drop(connector);
    if persist.is_some() {
        let record = persist_dir().join(persist_key(host));
        std::fs::write(&record, session.control_socket().display().to_string())
            .with_context(|| format!("recording the kept connection in {}", record.display()))?;
    }
    Ok(SshRemote::new(host, session, persist, printer))
}

/// ssh's options for one host: its user, port and keys, strict host-key checking,
/// keepalives, and a master that lingers [`MASTER_LINGER_S`] after its last client.
fn session_builder(host: &Host) -> SessionBuilder {
    let mut b = SessionBuilder::default();
    b.user(host.ssh.user.clone())
        .port(host.ssh.port)
        .known_hosts_check(KnownHosts::Strict)
        .connect_timeout(Duration::from_secs(host.ssh.connect_timeout))
        .server_alive_interval(Duration::from_secs(KEEPALIVE_S))
        .control_directory(control_dir())
        .control_persist(openssh::ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(MASTER_LINGER_S).expect("non-zero"),
        ));
    if let Some(k) = &host.ssh.known_hosts {
        b.user_known_hosts_file(k);
    }
    if let Some(k) = &host.ssh.identity_file {
        b.keyfile(k);
    }
    b
}

/// ssh's messages about a connection it reached through a ProxyCommand (the connector)
/// name the peer "UNKNOWN port 65535" ("Connection to UNKNOWN port 65535 timed out"):
/// put the host's address and port in its place.
fn named_peer(text: Vec<u8>, host: &Host) -> Vec<u8> {
    const UNKNOWN: &str = "UNKNOWN port 65535";
    let s = String::from_utf8_lossy(&text);
    if !s.contains(UNKNOWN) {
        return text;
    }
    let peer = format!("{} ({}) port {}", host.name, host.address, host.ssh.port);
    s.replace(UNKNOWN, &peer).into_bytes()
}

/// The most useful line of an openssh error: the crate keeps ssh's own message
/// ("Host key verification failed.", "Connection refused") at the end of the chain.
fn describe(e: &openssh::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    let text = parts.join(": ");
    if text.contains("Host key verification failed")
        || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        format!("host key verification failed (the host's key is not in known_hosts, or differs): {text}")
    } else {
        text
    }
}

impl SshRemote {
    /// A host connected through `session`, its master held open for this process's life.
    fn new(host: &Host, session: Session, persist: Option<u64>, printer: Arc<Printer>) -> Self {
        SshRemote {
            name: host.name.clone(),
            host: host.clone(),
            sudo: host.ssh.user != "root",
            hold: hold_master(&session),
            session: Arc::new(session),
            persist,
            printer,
            commands: AtomicUsize::new(0),
            agent: Default::default(),
            kept: Default::default(),
        }
    }

    /// Closes the connection, or leaves its master running when it is kept (--persist).
    pub async fn close(mut self) -> Result<()> {
        drop(self.hold.take());
        // Dropping the agent's pipes is its end of input: it exits on its own, after
        // every answer was read (waiting for that would cost the run a round trip).
        if let Some(agent) = self.agent.into_inner() {
            agent.stderr.abort();
        }
        let session = Arc::try_unwrap(self.session)
            .map_err(|_| anyhow!("{}: the SSH connection is still in use", self.name))?;
        if self.persist.is_some() {
            let _ = session.detach();
            return Ok(());
        }
        session
            .close()
            .await
            .with_context(|| format!("{}: closing the SSH connection", self.name))
    }

    /// The program and arguments of a remote command: through `sudo -n` unless root.
    fn root_argv<'a>(&self, argv: &[&'a str]) -> (&'a str, Vec<&'a str>) {
        if self.sudo {
            ("sudo", [&["-n"], argv].concat())
        } else {
            (argv[0], argv[1..].to_vec())
        }
    }

    /// Starts the agent that serves this connection's requests (one remote command);
    /// behind `check` when given (its argv first; the caller writes its stdin).
    async fn start_agent(&self, op: &str, check: Option<&Check>) -> Result<AgentProcess> {
        let n = self.commands.fetch_add(1, Ordering::SeqCst) + 1;
        let mut argv: Vec<String> = check.map(|c| c.argv.clone()).unwrap_or_default();
        argv.extend(agent::argv(&["serve"]));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (program, args) = self.root_argv(&argv);
        let what = if check.is_some() {
            "check, then agent"
        } else {
            "agent"
        };
        self.printer.detail(
            "Remote",
            format!(
                "{} #{n}: {program} {} ({what}, from {op})",
                self.name,
                short(&args)
            ),
        );
        let context = || format!("{}: starting the agent ({program})", self.name);
        let mut child = Session::to_command(self.session.clone(), program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .with_context(context)?;
        let mut stdin = child.stdin().take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout().take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut stderr = child.stderr().take().ok_or_else(|| anyhow!("no stderr"))?;
        let stderr = tokio::spawn(async move {
            let mut e = Vec::new();
            if let Err(too) = capped::read_to_end(&mut stderr, &mut e, capped::MAX_FROM_HOST).await
            {
                e.extend_from_slice(format!("\n(stderr: {too})").as_bytes());
            }
            e
        });
        // The agent's modules first; a host without python3 shows up at the first request.
        if check.is_none() {
            let _ = stdin.write_all(agent::bundle()).await;
        }
        Ok(AgentProcess {
            child,
            stdin,
            stdout: tokio::io::BufReader::new(stdout),
            stderr,
        })
    }
}

/// The output of an agent that ended before a whole answer: its exit status, stderr and why.
async fn ended(proc: AgentProcess, why: &str, line: Vec<u8>, host: &Host) -> ExecOutput {
    let (status, stderr) = proc.finish().await;
    let mut stderr = named_peer(stderr, host);
    stderr.extend_from_slice(format!("\n({why})").as_bytes());
    ExecOutput {
        status,
        stdout: line,
        stderr,
    }
}

#[async_trait]
impl Remote for SshRemote {
    fn name(&self) -> &str {
        &self.name
    }

    async fn agent(&self, request: Vec<u8>, op: &str) -> Result<ExecOutput> {
        if let Some(out) = self.kept_request(&request, op).await {
            return out;
        }
        let mut slot = self.agent.lock().await;
        if slot.is_none() {
            *slot = Some(self.start_agent(op, None).await?);
        }
        let proc = slot.as_mut().expect("started above");
        self.printer.detail("Agent", format!("{} {op}", self.name));
        let (why, line) = match exchange(&mut proc.stdin, &mut proc.stdout, &request).await {
            Ok(answer) => return Ok(answer),
            Err(Failed::TooLarge(e)) => {
                // Not waited for: it may still be writing. The connection's end ends it.
                drop(slot.take());
                return Err(Failed::too_large(e, &self.name, op));
            }
            Err(Failed::Ended(why, line)) => (why, line),
        };
        // The agent ended (it crashed, or the connection dropped): its exit status and
        // stderr say why; the next request starts a new one.
        let proc = slot.take().expect("present");
        Ok(ended(proc, &why, line, &self.host).await)
    }

    async fn agent_checked(&self, check: &Check, request: Vec<u8>, op: &str) -> Result<Checked> {
        // A kept agent answers without a remote command: nothing to save there.
        if self.persist.is_some() {
            return Ok(Checked::Agent(self.agent(request, op).await?));
        }
        let mut slot = self.agent.lock().await;
        if slot.is_some() {
            drop(slot);
            return Ok(Checked::Agent(self.agent(request, op).await?));
        }
        let mut proc = self.start_agent(op, Some(check)).await?;
        self.printer.detail("Agent", format!("{} {op}", self.name));
        // The check's line, the agent's modules and the request in one go, while the answer is
        // read: a check that answers alone reads none of the rest.
        let mut input = check.first_line.clone();
        input.extend_from_slice(agent::bundle());
        input.extend_from_slice(&agent::framed(&request));
        let mut line = Vec::new();
        let read = {
            let AgentProcess { stdin, stdout, .. } = &mut proc;
            let write = async {
                let _ = stdin.write_all(&input).await;
                let _ = stdin.flush().await;
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = capped::read_line(stdout, &mut line, capped::MAX_FROM_HOST) => r,
                _ = write => unreachable!("pending"),
            }
        };
        match read {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                if line.starts_with(&check.passed) {
                    let (status, stderr) = proc.finish().await;
                    if status == Some(0) {
                        self.printer
                            .detail("Checked", format!("{} in sync (no agent)", self.name));
                        return Ok(Checked::Passed(line));
                    }
                    return Ok(Checked::Agent(ExecOutput {
                        status,
                        stdout: line,
                        stderr,
                    }));
                }
                *slot = Some(proc);
                Ok(Checked::Agent(ExecOutput {
                    status: Some(0),
                    stdout: line,
                    stderr: Vec::new(),
                }))
            }
            Ok(_) => Ok(Checked::Agent(
                ended(
                    proc,
                    "end of output before a whole answer",
                    line,
                    &self.host,
                )
                .await,
            )),
            Err(e) if capped::is_too_large(&e) => Err(Failed::too_large(e, &self.name, op)),
            Err(e) => Ok(Checked::Agent(
                ended(proc, &e.to_string(), line, &self.host).await,
            )),
        }
    }

    async fn exec_fresh(&self, argv: &[&str], stdin: Vec<u8>, label: &str) -> Result<ExecOutput> {
        self.printer
            .detail("Connecting", format!("{} (a fresh connection)", self.name));
        // Never persisted, never resumed: its own master, its own TCP connection.
        let fresh = connect_with(&self.host, self.printer.clone(), None)
            .await
            .with_context(|| format!("{}: a fresh SSH connection failed", self.name))?;
        let out = fresh.exec(argv, stdin, label).await;
        let closed = fresh.close().await;
        let out = out?;
        closed?;
        Ok(out)
    }

    async fn exec_io(
        &self,
        argv: &[&str],
        mut stdin: Input<'_>,
        stdout: Option<Sink<'_>>,
        label: &str,
    ) -> Result<ExecOutput> {
        let n = self.commands.fetch_add(1, Ordering::SeqCst) + 1;
        let (program, args) = self.root_argv(argv);
        self.printer.detail(
            "Remote",
            format!("{} #{n}: {program} {} ({label})", self.name, short(&args)),
        );
        let mut cmd = self.session.command(program);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .await
            .with_context(|| format!("{}: starting remote command {program}", self.name))?;
        let child_in = child.stdin().take();
        let child_out = child.stdout().take();
        let child_err = child.stderr().take();
        let feed = async {
            if let Some(mut w) = child_in {
                tokio::io::copy(&mut stdin, &mut w).await?;
                w.shutdown().await.ok();
            }
            Ok::<_, std::io::Error>(())
        };
        let drain = async {
            let mut collected = Vec::new();
            if let Some(mut r) = child_out {
                match stdout {
                    Some(mut sink) => {
                        tokio::io::copy(&mut r, &mut sink).await?;
                        sink.shutdown().await.ok();
                    }
                    None => {
                        capped::read_to_end(&mut r, &mut collected, capped::MAX_FROM_HOST).await?;
                    }
                }
            }
            Ok::<_, std::io::Error>(collected)
        };
        let errors = async {
            let mut e = Vec::new();
            if let Some(mut r) = child_err {
                capped::read_to_end(&mut r, &mut e, capped::MAX_FROM_HOST).await?;
            }
            Ok::<_, std::io::Error>(e)
        };
        let context = || format!("{}: remote command {program} ({label})", self.name);
        // The first error ends the wait: output past the limit is not read any further.
        let ((), out, err) = tokio::try_join!(feed, drain, errors).with_context(context)?;
        let status = child.wait().await.with_context(context)?;
        Ok(ExecOutput {
            status: status.code(),
            stdout: out,
            stderr: named_peer(err, &self.host),
        })
    }
}

/// argv for -v, with long arguments cut.
fn short(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.len() > 40 || a.contains('\n') {
                let cut = a.char_indices().nth(30).map(|(i, _)| i).unwrap_or(a.len());
                format!("'{}…'", a[..cut].split('\n').next().unwrap_or_default())
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
