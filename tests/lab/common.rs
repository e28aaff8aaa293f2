//! Shared helpers of the lab tests: which lab (`LAB_NAME`: its containers, addresses,
//! state directory and inventory, all from here), bringing it up once per run, running
//! the CLI, talking HTTP to lab addresses only, and reading state straight from the
//! containers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lab the tests run on: `LAB_NAME` as `lab/up` and `lab/down` read it (`lab`, the
/// default, `bench` or `dev`), with the same table: container prefix, second octet of
/// the addresses, state directory under lab/.
struct LabName {
    name: &'static str,
    prefix: &'static str,
    octet: u8,
    state: &'static str,
}

const LABS: &[LabName] = &[
    LabName {
        name: "lab",
        prefix: "foobar-lab",
        octet: 231,
        state: ".state",
    },
    LabName {
        name: "bench",
        prefix: "foobar-bench",
        octet: 232,
        state: ".state-bench",
    },
    LabName {
        name: "dev",
        prefix: "foobar-dev",
        octet: 233,
        state: ".state-dev",
    },
];

fn which_lab() -> &'static LabName {
    static WHICH: OnceLock<&'static LabName> = OnceLock::new();
    WHICH.get_or_init(|| {
        let name = std::env::var("LAB_NAME").unwrap_or_default();
        let name = if name.is_empty() {
            "lab"
        } else {
            name.as_str()
        };
        LABS.iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("unknown LAB_NAME {name:?} (want lab, bench or dev)"))
    })
}

/// `LAB_NAME` (`lab` unless set).
pub fn lab_name() -> &'static str {
    which_lab().name
}

/// The Docker container of a lab host (`foobar-lab-web-01`, `foobar-bench-web-01`, ...).
pub fn container(host: &str) -> String {
    format!("{}-{host}", which_lab().prefix)
}

/// The first two octets of the lab's addresses ("10.231" for the default lab).
pub fn net() -> String {
    format!("10.{}", which_lab().octet)
}

/// An address (or text holding addresses) written for the default lab, 10.231.x.y,
/// moved to this lab's network: tests and inventory edits are written once, for 10.231.
pub fn addr(default_lab: &str) -> String {
    default_lab.replace("10.231.", &format!("{}.", net()))
}

/// The lab's state directory (ssh key, known_hosts, secrets): lab/.state for the
/// default lab, lab/.state-bench, lab/.state-dev.
pub fn state_dir() -> PathBuf {
    root().join("lab").join(which_lab().state)
}

fn lab_addr(cell: &'static OnceLock<String>, default_lab: &str) -> &'static str {
    cell.get_or_init(|| addr(default_lab))
}

/// lb-01's address.
pub fn lb() -> &'static str {
    static A: OnceLock<String> = OnceLock::new();
    lab_addr(&A, "10.231.0.11")
}

/// web-01's address.
pub fn web1() -> &'static str {
    static A: OnceLock<String> = OnceLock::new();
    lab_addr(&A, "10.231.1.11")
}

/// web-02's address.
pub fn web2() -> &'static str {
    static A: OnceLock<String> = OnceLock::new();
    lab_addr(&A, "10.231.1.12")
}

/// The inventory of the lab's three default hosts: lab/inventory.yaml (committed, for
/// the default lab), or for another lab the same written into its state directory
/// with that lab's addresses and state (see [`lab_variant`]).
pub fn lab_inventory() -> PathBuf {
    if lab_name() == "lab" {
        root().join("lab/inventory.yaml")
    } else {
        lab_variant("inventory", |t| t.to_string())
    }
}

/// Whether `docker info` answers (a working Docker daemon).
pub fn docker_works() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

static LAB: OnceLock<()> = OnceLock::new();

/// The lab, fresh for this run of the lab binary (lab/down then lab/up, unless
/// FOOBAR_LAB_REUSE is set): brought up once, by main() before the first test; a test
/// calls it to say it needs the lab. Panics when lab/up fails.
pub fn lab() {
    LAB.get_or_init(|| {
        // lab/up reads LAB_OS: the kind of every host (debian13 unless set).
        eprintln!(
            "lab: {} hosts (LAB_OS) on LAB_NAME={}",
            lab_os(),
            lab_name()
        );
        // A fresh lab unless the developer asks to reuse the running one.
        if std::env::var("FOOBAR_LAB_REUSE").is_err() {
            sh(&root().join("lab/down"), &[]);
        }
        let out = sh(&root().join("lab/up"), &[]);
        assert!(out.status.success(), "lab/up failed:\n{}", text(&out));
    });
}

pub fn sh(script: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()))
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the CLI with NO_COLOR and no terminal.
pub fn cli(args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_foobar-infra");
    Command::new(bin)
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("running foobar-infra")
}

/// `apply INVENTORY [ARGS...]`, which must succeed (exit 0); returns its output.
pub fn apply_ok(inventory: &str, args: &[&str]) -> Output {
    let out = cli(&[&["apply", inventory], args].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    out
}

/// docker exec in a lab container; returns stdout, panics on failure.
pub fn exec(host: &str, argv: &[&str]) -> String {
    let out = exec_raw(host, argv);
    assert!(
        out.status.success(),
        "docker exec {host} {argv:?}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn exec_raw(host: &str, argv: &[&str]) -> Output {
    Command::new("docker")
        .args(["exec", &container(host)])
        .args(argv)
        .output()
        .expect("docker exec")
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// sha256 of a file on a host ("" when missing).
pub fn remote_sha(host: &str, path: &str) -> String {
    let out = exec_raw(host, &["sha256sum", path]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

pub fn mtime(host: &str, path: &str) -> String {
    exec(host, &["stat", "-c", "%Y.%y", path])
        .trim()
        .to_string()
}

pub fn pidfile(host: &str, path: &str) -> String {
    exec(host, &["cat", path]).trim().to_string()
}

/// Every managed file of the 3-host lab, for "nothing changed anywhere" checks.
pub const MANAGED: &[(&str, &str)] = &[
    ("lb-01", "/etc/haproxy/haproxy.cfg"),
    ("web-01", "/etc/nginx/nginx.conf"),
    ("web-01", "/etc/nginx/sites-foobar/www.foobar.com.conf"),
    ("web-01", "/etc/mysql/mariadb.conf.d/60-foobar.cnf"),
    ("web-02", "/etc/nginx/nginx.conf"),
    ("web-02", "/etc/nginx/sites-foobar/www.foobar.com.conf"),
    ("web-02", "/etc/mysql/mariadb.conf.d/60-foobar.cnf"),
];

pub fn managed_hashes() -> Vec<String> {
    MANAGED
        .iter()
        .map(|(h, p)| format!("{h}:{p}:{}", remote_sha(h, p)))
        .collect()
}

/// A minimal HTTP/1.1 GET on a new connection; only lab addresses or loopback.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn http_get(addr: &str, path: &str) -> std::io::Result<Response> {
    http(addr, "GET", path, "")
}

/// A form POST on a new connection.
pub fn http_post(addr: &str, path: &str, form: &str) -> std::io::Result<Response> {
    http(addr, "POST", path, form)
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<Response> {
    assert!(
        addr.starts_with(&format!("{}.", net())) || addr.starts_with("127."),
        "tests only talk to the lab or loopback, not {addr}"
    );
    // "ADDRESS" (port 80) or "ADDRESS:PORT"
    let sock: SocketAddr = if addr.contains(':') {
        addr.parse().unwrap()
    } else {
        format!("{addr}:80").parse().unwrap()
    };
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n"
    )?;
    if !body.is_empty() {
        write!(
            s,
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        )?;
    }
    write!(s, "\r\n{body}")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Polls `f` every 200 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

/// Writes a variant of lab/inventory.yaml into the lab's state directory (so relative
/// paths still hold). `edit` sees and writes the default lab's text (10.231.x.y,
/// `.state/`); the file gets this lab's addresses (see [`addr`]).
pub fn lab_variant(name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let base = std::fs::read_to_string(root().join("lab/inventory.yaml")).unwrap();
    let path = state_dir().join(format!("{name}.yaml"));
    let text = edit(&base)
        .replace(".state/", "")
        .replace("source: ../", "source: ../../");
    std::fs::write(&path, addr(&text))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Removes every inventory variant ([`lab_variant`]) from the lab's state directory.
pub fn forget_variants() {
    let Ok(entries) = std::fs::read_dir(state_dir()) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|x| x == "yaml") {
            std::fs::remove_file(&path)
                .unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
    }
}

/// A copy of examples/app in the lab's state directory (`app-TAG`, beside the
/// inventory variants) with robots.txt naming TAG: a new release.
pub fn example_app_copy(tag: &str) -> PathBuf {
    let dir = state_dir().join(format!("app-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("cp")
        .arg("-r")
        .arg(root().join("examples/app"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "copying examples/app");
    std::fs::write(
        dir.join("public/robots.txt"),
        format!("User-agent: *\nDisallow:\n# {tag}\n"),
    )
    .unwrap();
    dir
}

/// The kind of lab the fixture makes: `LAB_OS` (what `lab/up` reads), default debian13.
pub fn lab_os() -> String {
    std::env::var("LAB_OS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "debian13".to_string())
}

/// The kind of a lab host ("debian12" or "debian13"), from its container's
/// `foobar-lab.os` label (a container made before kinds existed is debian12).
pub fn host_os(host: &str) -> String {
    let out = docker(&[
        "container",
        "inspect",
        "-f",
        "{{index .Config.Labels \"foobar-lab.os\"}}",
        &container(host),
    ]);
    assert!(
        out.status.success(),
        "docker inspect {host}: {}",
        text(&out)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "" => "debian12".to_string(),
        os => os.to_string(),
    }
}

/// Count of "Starting session: command" lines sshd logged since `since` (a
/// [`docker_now`] timestamp: Unix seconds with fractions). sshd logs to `docker logs`
/// on debian12 and to the journal on debian13 (read whole: sshd-session processes are
/// not reliably tagged with ssh.service).
pub fn sshd_sessions_since(host: &str, since: &str) -> usize {
    const MARK: &str = "Starting session: command";
    let c = container(host);
    if host_os(host) == "debian12" {
        let out = docker(&["logs", "--since", since, &c]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return all.lines().filter(|l| l.contains(MARK)).count();
    }
    let since_s: f64 = since.parse().unwrap_or_else(|_| {
        panic!("sshd_sessions_since wants a docker_now() timestamp, not {since:?}")
    });
    // Whatever journald still holds in memory reaches the files (and so the reader).
    let sync = docker(&["exec", &c, "journalctl", "--sync"]);
    assert!(
        sync.status.success(),
        "journalctl --sync on {host}: {}",
        text(&sync)
    );
    // --since takes whole seconds: start a second early and compare each entry's own
    // time (short-unix: "SECONDS.MICROS HOST IDENT[PID]: MESSAGE").
    let out = docker(&[
        "exec",
        &c,
        "journalctl",
        "--quiet",
        "--no-pager",
        "-o",
        "short-unix",
        "--since",
        &format!("@{}", since_s.floor() as u64),
    ]);
    assert!(out.status.success(), "journalctl on {host}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(MARK))
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|t| t >= since_s)
        })
        .count()
}

pub fn docker_now() -> String {
    // docker logs --since takes a Unix timestamp with fractions.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// A SQL query as root on a lab host (tab-separated rows, no header).
pub fn sql(host: &str, query: &str) -> String {
    exec(host, &["mariadb", "-N", "-B", "-e", query])
        .trim()
        .to_string()
}

/// The lab's secret values (to prove they never show up anywhere).
pub fn lab_secrets() -> Vec<String> {
    [
        "db_app_password",
        "db_replication_password",
        "db_monitor_password",
    ]
    .iter()
    .map(|n| {
        std::fs::read_to_string(state_dir().join(n))
            .unwrap()
            .trim()
            .to_string()
    })
    .collect()
}

/// Samples every process's argv on the lab hosts until `stop` is set (bounded to
/// `limit`); returns every line seen.
pub fn sample_argv(
    hosts: &[&str],
    stop: &std::sync::atomic::AtomicBool,
    limit: Duration,
) -> Vec<String> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && t0.elapsed() < limit {
        for h in hosts {
            let out = exec_raw(h, &["ps", "-eo", "args"]);
            seen.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| format!("{h}: {l}")),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// [`sample_argv`] on the three base hosts in a thread, until the flag is set.
pub fn spawn_argv_sampler(
    limit: Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let handle =
        std::thread::spawn(move || sample_argv(&["lb-01", "web-01", "web-02"], &flag, limit));
    (stop, handle)
}

/// Requests at the load balancer for `duration` (at most `max` of them), each on a new
/// connection; returns (ok, failures with their reasons).
pub fn load_loop(path: &str, duration: Duration, max: usize) -> (usize, Vec<String>) {
    let t0 = Instant::now();
    let (mut ok, mut failed) = (0, Vec::new());
    let mut n = 0;
    while t0.elapsed() < duration && n < max {
        n += 1;
        match http_get(lb(), path) {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!(
                "{:?}: HTTP {} {}",
                t0.elapsed(),
                r.status,
                r.body.trim()
            )),
            Err(e) => failed.push(format!("{:?}: {e}", t0.elapsed())),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (ok, failed)
}
