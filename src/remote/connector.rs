//! The TCP connector: what ssh runs as its ProxyCommand (`foobar-infra ssh-connect HOST
//! PORT SECONDS ERRFILE`), and the ssh_config that puts it in place.
//!
//! Why it exists: OpenSSH's client keeps Nagle's algorithm on its socket until a session
//! is set up, and the server sends small packets back to back (after the key exchange; after
//! authentication, the key-options debug message then the channel confirmation). With
//! Linux's delayed ACK (40 ms), each such pair waits for an ACK: two ~40 ms stalls on every
//! fresh connection, visible in `ssh -v` timestamps and in the server's strace. The
//! connector opens the TCP connection with TCP_NODELAY and acknowledges every segment at
//! once (TCP_QUICKACK after each read), then only copies bytes between ssh and the socket.
//! ssh still does everything else: host-key verification (strict), authentication, the
//! encryption, the multiplexing. Measured in bench/analysis.md.
//!
//! The config: the user's own configuration comes first (their ssh_config, or
//! ~/.ssh/config then /etc/ssh/ssh_config, as ssh would read them), so that a ProxyCommand
//! or ProxyJump the user set for a host wins (ssh takes the first value it reads); the
//! connector is the default for every other host. `ssh.connector: ssh` in the inventory
//! turns it off (ssh then opens the TCP connection itself, as before). Only the binary
//! offers it ([`enable`], called by main): a library user gets plain ssh.
//!
//! The shell: ssh runs every ProxyCommand as `$SHELL -c "exec COMMAND"` (bash, here: its
//! start and the second exec cost ~5 ms of CPU per connection, perf-measured). `enable`
//! therefore makes this binary the `SHELL` of the processes it starts, keeping the user's
//! in `FOOBAR_INFRA_USER_SHELL`: [`as_shell`] runs the connector's own command directly
//! and hands anything else (a user's ProxyCommand, LocalCommand, `Match exec`) to the
//! user's shell unchanged, with `SHELL` restored.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::inventory::{Connector, SshSettings};

/// The binary that serves `ssh-connect`, once main has enabled the connector.
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// Where the user's own `SHELL` waits while this binary stands in as ssh's shell ("" when
/// it was unset).
const USER_SHELL: &str = "FOOBAR_INFRA_USER_SHELL";

/// Offers the connector to this process's SSH connections (the foobar-infra binary), and
/// makes the binary the shell ssh runs it with ([`as_shell`]). Call it before any thread
/// starts: it sets environment variables.
pub fn enable() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if plain_path(&exe).is_some() && std::env::var_os(USER_SHELL).is_none() {
        std::env::set_var(USER_SHELL, std::env::var_os("SHELL").unwrap_or_default());
        std::env::set_var("SHELL", &exe);
    }
    let _ = EXE.set(exe);
}

/// This binary as ssh's `$SHELL` (set by [`enable`]): `EXE -c "exec EXE ssh-connect HOST
/// PORT SECONDS ERRFILE"` runs the connector here, with no shell and no second exec;
/// anything else is executed by the user's shell with the same arguments. None: the
/// process was not started as that shell.
pub fn as_shell(args: &[OsString]) -> Option<i32> {
    let user_shell = std::env::var_os(USER_SHELL)?;
    if let [_, flag, command] = args {
        if flag == "-c" {
            if let Some(own) = own_command(command) {
                return Some(main(&own));
            }
        }
    }
    Some(hand_over(&user_shell, args))
}

/// The connector's arguments, if `command` is exactly what ssh makes of this binary's
/// ProxyCommand line.
fn own_command(command: &OsStr) -> Option<Vec<OsString>> {
    let words: Vec<&str> = command.to_str()?.split(' ').collect();
    let exe = std::env::current_exe().ok()?;
    match words.as_slice() {
        ["exec", prog, sub, rest @ ..] if *sub == SUBCOMMAND && Path::new(prog) == exe => {
            Some(rest.iter().map(OsString::from).collect())
        }
        _ => None,
    }
}

/// Replaces this process with the user's shell (`/bin/sh` when SHELL was unset), given
/// the same arguments and the environment as it was before [`enable`].
fn hand_over(user_shell: &OsStr, args: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let shell = if user_shell.is_empty() {
        OsStr::new("/bin/sh")
    } else {
        user_shell
    };
    let mut cmd = std::process::Command::new(shell);
    cmd.args(args.iter().skip(1)).env_remove(USER_SHELL);
    if user_shell.is_empty() {
        cmd.env_remove("SHELL");
    } else {
        cmd.env("SHELL", user_shell);
    }
    let err = cmd.exec();
    eprintln!("foobar-infra: running {}: {err}", shell.to_string_lossy());
    127
}

/// A per-connection ssh_config that puts the connector in place, and the file where the
/// connector writes why it could not connect. Dropping it removes both: ssh reads its
/// config once, when it starts.
pub struct Prepared {
    dir: tempfile::TempDir,
}

impl Prepared {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// What the connector reported, if it failed (e.g. "connection refused").
    pub fn error(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("error")).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }
}

/// The config for one connection, or None when the connector is off for this host or a
/// path cannot be written into an ssh_config safely (then ssh connects by itself).
pub fn prepare(ssh: &SshSettings) -> Option<Prepared> {
    if ssh.connector != Connector::Builtin {
        return None;
    }
    let exe = EXE.get()?;
    let dir = tempfile::Builder::new()
        .prefix("foobar-infra-ssh")
        .tempdir()
        .ok()?;
    let user = match &ssh.config_file {
        Some(c) => Some(std::path::absolute(c).ok()?),
        None => None,
    };
    let text = config_text(
        user.as_deref(),
        exe,
        ssh.connect_timeout,
        &dir.path().join("error"),
    )?;
    std::fs::write(dir.path().join("ssh_config"), text).ok()?;
    Some(Prepared { dir })
}

/// Characters a path may have to be written, unquoted, into an ssh_config line and a
/// ProxyCommand (no spaces, quotes, `%` tokens, glob characters or shell syntax).
fn plain_path(p: &Path) -> Option<&str> {
    let s = p.to_str()?;
    let ok = s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-@,:=".contains(&b));
    ok.then_some(s)
}

/// The ssh_config text: the user's configuration first, then the connector for any host
/// that has no ProxyCommand or ProxyJump of its own.
pub fn config_text(
    user_config: Option<&Path>,
    exe: &Path,
    timeout: u64,
    errfile: &Path,
) -> Option<String> {
    let exe = plain_path(exe)?;
    let errfile = plain_path(errfile)?;
    let includes = match user_config {
        // ssh reads only this file when it is given with -F.
        Some(c) => format!("Include {}\n", plain_path(c)?),
        // ssh's defaults: the user's file, then the system's.
        None => "Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n".to_string(),
    };
    Some(format!(
        "# Written by foobar-infra for one connection: your ssh configuration first (its\n\
         # settings win), then foobar-infra's TCP connector as the default ProxyCommand.\n\
         {includes}\
         Host *\n    ProxyCommand {exe} {SUBCOMMAND} %h %p {timeout} {errfile}\n"
    ))
}

/// The internal subcommand ssh runs as ProxyCommand: `EXE ssh-connect HOST PORT SECONDS
/// ERRFILE` (main.rs dispatches it before parsing the command line).
pub const SUBCOMMAND: &str = "ssh-connect";

/// `ssh-connect`'s entry point: its four arguments, then [`run`]; the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let usage = "usage: foobar-infra ssh-connect HOST PORT SECONDS ERRFILE (ssh's ProxyCommand)";
    let parsed = match args {
        [host, port, secs, errfile] => host.to_str().and_then(|h| {
            let port = port.to_str()?.parse::<u16>().ok()?;
            let secs = secs.to_str()?.parse::<u64>().ok()?;
            Some((h, port, secs, Path::new(errfile)))
        }),
        _ => None,
    };
    let Some((host, port, secs, errfile)) = parsed else {
        eprintln!("foobar-infra: {usage}");
        return 1;
    };
    match run(host, port, secs, errfile) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("foobar-infra: {e:#}");
            1
        }
    }
}

/// `ssh-connect`: connects to HOST:PORT and relays between stdin/stdout (ssh) and the
/// socket until either side ends. Errors also go to `errfile`, since the ssh master's
/// stderr goes nowhere.
pub fn run(host: &str, port: u16, timeout: u64, errfile: &Path) -> Result<()> {
    let stream = match connect(host, port, Duration::from_secs(timeout.max(1))) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::write(errfile, format!("{e:#}\n"));
            return Err(e);
        }
    };
    relay(stream)
}

/// The first address of HOST that accepts, each tried with the timeout.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut errors = Vec::new();
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                s.set_nodelay(true).context("setting TCP_NODELAY")?;
                // ssh's own default (TCPKeepAlive yes), which it cannot set on a proxy.
                socket2::SockRef::from(&s)
                    .set_keepalive(true)
                    .context("setting SO_KEEPALIVE")?;
                return Ok(s);
            }
            Err(e) if addrs.len() == 1 => errors.push(e.to_string()),
            Err(e) => errors.push(format!("{a}: {e}")),
        }
    }
    if errors.is_empty() {
        bail!("{host} has no address");
    }
    Err(anyhow!(
        "connect to host {host} port {port}: {}",
        errors.join("; ")
    ))
}

/// Copies ssh's bytes to the socket (a thread) and the socket's to ssh (here), answering
/// every segment at once. Ends when the server closes the connection or ssh goes away.
fn relay(stream: TcpStream) -> Result<()> {
    let mut up = stream.try_clone().context("cloning the socket")?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        // Larger than stdin's buffer: reads bypass it and go straight to the pipe.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading from the server"),
        };
        quickack(&down);
        if stdout
            .write_all(&buf[..n])
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(()); // ssh has gone
        }
    }
}

/// Acknowledge what arrived now rather than after the delayed-ACK timer (Linux resets
/// the flag as it sees fit, so it is set again after every read).
fn quickack(s: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_the_shell_it_runs_only_its_own_proxy_command_line() {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let own = format!("exec {exe} {SUBCOMMAND} 10.0.0.1 22 10 /tmp/x/error");
        assert_eq!(
            own_command(OsStr::new(&own)),
            Some(
                ["10.0.0.1", "22", "10", "/tmp/x/error"]
                    .map(OsString::from)
                    .to_vec()
            )
        );
        for other in [
            format!("exec /usr/bin/foobar-infra {SUBCOMMAND} 10.0.0.1 22 10 /tmp/e"),
            format!("exec {exe} apply inventory.yaml"),
            format!("{exe} {SUBCOMMAND} 10.0.0.1 22 10 /tmp/e"),
            "exec ssh -W %h:%p bastion".to_string(),
            "exec nc 10.0.0.1 22".to_string(),
        ] {
            assert_eq!(own_command(OsStr::new(&other)), None, "{other}");
        }
    }

    #[test]
    fn the_users_config_comes_first_and_the_connector_is_the_default() {
        let text = config_text(
            None,
            Path::new("/usr/local/bin/foobar-infra"),
            10,
            Path::new("/tmp/x/error"),
        )
        .unwrap();
        let inc_user = text.find("Include ~/.ssh/config").unwrap();
        let inc_sys = text.find("Include /etc/ssh/ssh_config").unwrap();
        let proxy = text
            .find("ProxyCommand /usr/local/bin/foobar-infra ssh-connect %h %p 10 /tmp/x/error")
            .unwrap();
        assert!(inc_user < inc_sys && inc_sys < proxy, "{text}");

        let text = config_text(
            Some(Path::new("/home/me/lab/ssh_config")),
            Path::new("/usr/local/bin/foobar-infra"),
            5,
            Path::new("/tmp/x/error"),
        )
        .unwrap();
        assert!(text.contains("Include /home/me/lab/ssh_config\n"), "{text}");
        assert!(!text.contains("/etc/ssh/ssh_config"), "{text}");
        assert!(!text.contains("~/.ssh/config"), "{text}");
    }

    #[test]
    fn a_path_that_an_ssh_config_line_cannot_hold_turns_the_connector_off() {
        let exe = Path::new("/usr/local/bin/foobar-infra");
        let err = Path::new("/tmp/x/error");
        for bad in [
            "/home/my docs/ssh_config",
            "/tmp/%h",
            "/tmp/a*",
            "rel/config",
            "/tmp/a'b",
        ] {
            assert!(
                config_text(Some(Path::new(bad)), exe, 5, err).is_none(),
                "{bad}"
            );
            assert!(config_text(None, Path::new(bad), 5, err).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_refused_connection_is_reported_with_the_address() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let errfile = dir.path().join("error");
        let e = run("127.0.0.1", port, 2, &errfile).unwrap_err();
        let written = std::fs::read_to_string(&errfile).unwrap();
        assert!(
            format!("{e:#}").contains(&format!("connect to host 127.0.0.1 port {port}: ")),
            "{e:#}"
        );
        assert!(written.contains("refused"), "{written}");
    }

    #[test]
    fn connect_sets_nodelay_and_keepalive() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = connect("127.0.0.1", port, Duration::from_secs(2)).unwrap();
        assert!(s.nodelay().unwrap());
        assert!(socket2::SockRef::from(&s).keepalive().unwrap());
    }
}
