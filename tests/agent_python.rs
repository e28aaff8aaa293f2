//! The agent as Python code, without the lab: its unit tests (tests/agent/test_*.py,
//! stdlib unittest on temporary directories with stand-in commands) run with the
//! machine's python3 (3.11) and under Python 3.13 in the Debian 13 image (Docker, no
//! network), pyflakes over it, and the bootstrap the tool puts in argv, run for real on
//! the modules the tool sends (src/remote/agent.rs), with its cache in a temporary
//! directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use foobar_infra::remote::agent;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CACHE: &str = "/var/lib/foobar-infra/agent";

/// The Python of Debian 13's hosts, for the unit tests under 3.13 (the machine has 3.11).
const IMAGE_313: &str = "foobar-infra-lab:trixie";

#[test]
fn the_agents_python_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests/agent", "-v"])
        .current_dir(ROOT)
        .output()
        .expect("python3 runs (it is what the hosts run the agent with)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}

/// A tool the test needs is missing: a failure under CI=true (.ci/run installs it),
/// else a skip that says so on stderr (`cargo test -- --nocapture` shows it).
fn missing(what: &str, how: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is missing, and CI=true: {how}"
    );
    eprintln!("SKIPPED (not run, not passed): {what} is missing: {how}");
}

/// The same unit tests under Python 3.13 (Debian 13's), in the lab image without
/// network, the sources mounted read-only.
#[test]
fn the_agents_python_tests_pass_under_python_3_13() {
    let image = Command::new("docker")
        .args(["image", "inspect", "--format", "ok", IMAGE_313])
        .output();
    if !image.map(|o| o.status.success()).unwrap_or(false) {
        return missing(
            &format!("Docker or the image {IMAGE_313}"),
            "lab/image --os debian13 builds it",
        );
    }
    // python3 in the image, without network, the sources read-only.
    let python_313 = |args: &[&str]| {
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "python3",
            ])
            .args(["-v", &format!("{ROOT}:/src:ro"), "-w", "/src", IMAGE_313])
            .args(args)
            .output()
            .unwrap()
    };
    let out = python_313(&["-c", "import sys; print(sys.version_info[:2])"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "(3, 13)");
    let out = python_313(&[
        "-B",
        "-m",
        "unittest",
        "discover",
        "-s",
        "tests/agent",
        "-v",
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "under Python 3.13:\n{text}");
}

/// pyflakes (PyPI) as .ci/run installs it: for this python3 (`pip install --user`),
/// else in a venv under target/.
fn pyflakes() -> Option<Command> {
    let venv = Path::new(ROOT).join("target/pyflakes/bin/python3");
    for python in [Path::new("python3"), venv.as_path()] {
        let probe = Command::new(python)
            .args(["-m", "pyflakes", "--version"])
            .output();
        if probe.map(|o| o.status.success()).unwrap_or(false) {
            let mut cmd = Command::new(python);
            cmd.args(["-m", "pyflakes"]);
            return Some(cmd);
        }
    }
    None
}

/// The agent and its tests are pyflakes-clean: no undefined or unused name, which in
/// a package whose modules import each other explicitly is what keeps them honest.
#[test]
fn the_agent_is_pyflakes_clean() {
    let Some(mut cmd) = pyflakes() else {
        return missing(
            "pyflakes",
            "python3 -m pip install --user pyflakes (as .ci/run does)",
        );
    };
    let out = cmd
        .args(["src/agent", "tests/agent"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every module of the package is sent, and nothing else.
#[test]
fn every_module_of_the_package_is_sent() {
    let dir = Path::new(ROOT).join("src/agent/foobar_agent");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".py").map(str::to_string)
        })
        .filter(|name| name != "__main__") // `python3 -m foobar_agent`, by hand only
        .collect();
    on_disk.sort();
    let mut sent: Vec<String> = agent::MODULES.iter().map(|(n, _)| n.to_string()).collect();
    sent.sort();
    assert_eq!(sent, on_disk);
    for (name, source) in agent::MODULES {
        let file = std::fs::read_to_string(dir.join(format!("{name}.py"))).unwrap();
        assert_eq!(&file, source, "{name}.py is sent as it is on disk");
    }
}

/// A temporary directory standing in for /var/lib/foobar-infra (removed on drop).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("foobar-agent-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }

    fn cache(&self) -> PathBuf {
        self.0.join("agent")
    }

    fn package(&self) -> PathBuf {
        self.cache()
            .join(format!("foobar_agent_{}", agent::agent_id()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the agent as the tool starts it (argv and stdin), its cache moved to `cache`.
fn run_agent(cache: &Path, mode: &[&str], stdin: &[u8]) -> Output {
    let mut argv = agent::argv(mode);
    assert!(argv[4].contains(CACHE), "the bootstrap names its cache");
    argv[4] = argv[4].replace(CACHE, cache.to_str().unwrap());
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The agent's answer to a request it refuses (no host state read or written): proof
/// that the package loaded and dispatched it.
fn answers_unknown_op(cache: &Path) {
    let out = run_agent(
        cache,
        &[],
        &agent::one_shot_stdin(br#"{"op": "no-such-op"}"#),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("unknown op 'no-such-op'"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The files in the package's cache directory.
fn cached(package: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(package) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The bootstrap runs the modules from the bytes the tool sends and keeps only their
/// compiled code, as one root-only file: written once per version, a file put there as
/// a module never runs, a damaged code file is written again; where the cache is not
/// root-only it reads and writes nothing there.
#[test]
fn the_bootstrap_runs_the_sent_modules_and_caches_only_their_compiled_code() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("cache");
    let (cache, package) = (scratch.cache(), scratch.package());
    answers_unknown_op(&cache);
    let files = cached(&package);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("code.cpython-") && files[0].ends_with(".bin"),
        "{files:?}"
    );
    let code = package.join(&files[0]);
    let mode = std::fs::metadata(&code).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let written = std::fs::read(&code).unwrap();

    // A module file put in the cache never runs: the source is what the tool sent.
    std::fs::write(package.join("core.py"), "raise SystemExit(99)\n").unwrap();
    answers_unknown_op(&cache);
    assert_eq!(
        std::fs::read(&code).unwrap(),
        written,
        "written once per version"
    );
    std::fs::remove_file(package.join("core.py")).unwrap();
    // A damaged code file is written again from the sent source.
    std::fs::write(&code, b"damaged").unwrap();
    answers_unknown_op(&cache);
    assert_ne!(std::fs::read(&code).unwrap(), b"damaged");

    // A cache others could write: nothing is read from it or written to it.
    std::fs::remove_file(&code).unwrap();
    chmod(&cache, 0o777);
    answers_unknown_op(&cache);
    assert_eq!(cached(&package), Vec::<String>::new());
    chmod(&cache, 0o700);
    answers_unknown_op(&cache);
    assert_eq!(cached(&package), files);

    // The same for the package's own directory.
    std::fs::remove_file(&code).unwrap();
    chmod(&package, 0o755);
    answers_unknown_op(&cache);
    assert_eq!(cached(&package), Vec::<String>::new());
}

/// An observe loads the modules it needs, not those of stage, commit, the database's
/// restore, the firewall or the kept agent's daemon (each module loaded costs a host
/// file reads and time).
#[test]
fn an_observe_loads_only_the_modules_it_needs() {
    let probe = r#"
import sys
sys.path.insert(0, "src/agent")
from foobar_agent import ops
print(ops.OPS["observe"]({"paths": {"/etc/hostname": None}, "services": ["nginx"]})["ok"])
print(" ".join(sorted(m.split(".")[1] for m in sys.modules if m.startswith("foobar_agent."))))
"#;
    let out = Command::new("python3")
        .args(["-I", "-S", "-c", probe])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded: Vec<&str> = text.lines().nth(1).unwrap_or("").split(' ').collect();
    assert_eq!(text.lines().next(), Some("True"), "{text}");
    assert!(
        loaded.contains(&"observe") && loaded.contains(&"files"),
        "{loaded:?}"
    );
    for unused in [
        "commit",
        "stage",
        "db_restore",
        "daemon",
        "firewall",
        "actions",
        "live",
    ] {
        assert!(
            !loaded.contains(&unused),
            "{unused} loaded by an observe: {loaded:?}"
        );
    }
}

/// The agent knows a service's pid file only from the service table the tool sends
/// (src/services.rs): with a table that names another pid file, it reads that one.
#[test]
fn the_agent_reads_a_services_pid_file_from_the_table_it_is_sent() {
    let scratch = Scratch::new("table");
    let pid_file = scratch.0.join("nginx.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let observe = |table: &serde_json::Value| {
        let request = serde_json::json!({
            "op": "observe", "services": ["nginx"], "service_table": table, "certs": [],
            "haproxy": false, "max_content": 0, "packages": [], "paths": {}, "ports": [], "users": [],
        });
        let stdin = agent::one_shot_stdin(&serde_json::to_vec(&request).unwrap());
        let out = run_agent(&scratch.cache(), &[], &stdin);
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        answer["services"]["nginx"]["pid"].clone()
    };
    let mut table = foobar_infra::services::agent_table().clone();
    assert_eq!(table["nginx"]["pid_file"], "/run/nginx.pid");
    table["nginx"]["pid_file"] = pid_file.to_str().unwrap().into();
    assert_eq!(
        observe(&table),
        std::process::id(),
        "this process, from the table's pid file"
    );
    table["nginx"]["pid_file"] = serde_json::Value::Null;
    assert_eq!(
        observe(&table),
        serde_json::Value::Null,
        "no pid file in the table: none read"
    );
}

/// A serving agent answers framed requests, one line each, until stdin closes.
#[test]
fn a_serving_agent_answers_each_framed_request() {
    let scratch = Scratch::new("serve");
    let mut stdin = agent::bundle().to_vec();
    for op in ["first", "second"] {
        stdin.extend(agent::framed(format!(r#"{{"op": "{op}"}}"#).as_bytes()));
    }
    let out = run_agent(&scratch.cache(), &["serve"], &stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("'first'") && lines[1].contains("'second'"),
        "{text}"
    );
}
