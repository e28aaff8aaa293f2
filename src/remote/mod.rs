//! The boundary to the hosts: the [`Remote`] trait (one exec request with stdin), its SSH
//! implementation, and the agent call that every remote step goes through.

pub mod agent;
pub mod capped;
pub mod connector;
pub mod ssh;

use anyhow::Result;
use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte source for a remote command's stdin.
pub type Input<'a> = Box<dyn AsyncRead + Send + Unpin + 'a>;
/// Where a remote command's stdout is streamed to.
pub type Sink<'a> = Box<dyn AsyncWrite + Send + Unpin + 'a>;

/// What a remote command returned.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A check that runs on the host before the agent, in the same remote command
/// (`src/witness.rs`): `argv` (the agent's argv is appended after it), and the first
/// line of stdin, which the check reads and the agent never sees.
#[derive(Debug, Clone)]
pub struct Check {
    pub argv: Vec<String>,
    pub first_line: Vec<u8>,
    /// How the check's own answer line starts (anything else is the agent's).
    pub passed: Vec<u8>,
}

/// What a checked agent start answered.
#[derive(Debug, Clone)]
pub enum Checked {
    /// The check vouched for the host: its one line; no agent runs.
    Passed(Vec<u8>),
    /// The check handed over to the agent, which answered the request.
    Agent(ExecOutput),
}

/// A host the tool can run commands on.
#[async_trait]
pub trait Remote: Send + Sync {
    /// The inventory name of the host.
    fn name(&self) -> &str;
    /// Runs one command (one exec request) as root (through `sudo -n` when the login
    /// user is not root), streaming `stdin` into it and its stdout into `stdout` (or
    /// into the returned output when None). `label` says what it is for, for `-v`.
    async fn exec_io(
        &self,
        argv: &[&str],
        stdin: Input<'_>,
        stdout: Option<Sink<'_>>,
        label: &str,
    ) -> Result<ExecOutput>;

    /// Runs one command over a NEW connection (a fresh TCP connection and login, not
    /// the multiplexed master): proves that a new login still works, e.g. after a
    /// firewall change. A transport without connections (a test fake) runs it as usual.
    async fn exec_fresh(&self, argv: &[&str], stdin: Vec<u8>, label: &str) -> Result<ExecOutput> {
        self.exec(argv, stdin, label).await
    }

    /// Runs one agent request (JSON) and returns the agent's output: one answer line.
    /// This default starts an agent for the request alone; the SSH transport keeps one
    /// agent process per host for the whole run (observe, stage, commit: one start).
    async fn agent(&self, request: Vec<u8>, op: &str) -> Result<ExecOutput> {
        let argv = agent::argv(&[]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.exec(&argv, agent::one_shot_stdin(&request), op).await
    }

    /// [`Remote::agent`] behind a check: the check runs first on the host and either
    /// answers alone or hands over to the agent, which answers `request` (one remote
    /// command either way). This default (test fakes, kept agents) skips the check.
    async fn agent_checked(&self, check: &Check, request: Vec<u8>, op: &str) -> Result<Checked> {
        let _ = check;
        Ok(Checked::Agent(self.agent(request, op).await?))
    }

    /// Runs one command with `stdin` bytes, collecting its output.
    async fn exec(&self, argv: &[&str], stdin: Vec<u8>, label: &str) -> Result<ExecOutput> {
        self.exec_io(argv, Box::new(std::io::Cursor::new(stdin)), None, label)
            .await
    }
}
