//! Every operation through the real agent (tests/protocol/roundtrip.py, the machine's
//! python3, a temporary root): each request type, serialized here, is accepted by the
//! agent's shape check and its op, and the agent's answer parses into the answer type.
//! Also: shapes.py and DESIGN.md's protocol table are what the types say, and a
//! malformed request is refused with a message naming the field.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::database::*;
use super::release::*;
use super::run::*;
use super::*;
use crate::boot::BootAction;
use crate::diff::FileChangeKind;
use crate::plan::{DbRole, Service, ServiceAction};
use crate::remote::agent::ManifestEntry;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One sample request per op, in the order the harness runs them (stage before
/// commit before rollback), with how to read its answer.
struct Sample {
    op: &'static str,
    request: Value,
    parse: fn(Value) -> anyhow::Result<Value>,
}

fn sample<R: Operation>(request: R) -> Sample {
    Sample {
        op: R::OP,
        request: to_value(&request).expect("encodes"),
        parse: |v| {
            let typed: R::Answer = serde_json::from_value(v)?;
            Ok(serde_json::to_value(typed)?)
        },
    }
}

fn lock() -> LockOwner {
    LockOwner {
        owner: "alice@laptop".into(),
        pid: 4242,
        started: 1.7e9,
        tool_version: "0.1.0".into(),
        run_id: "run-a".into(),
    }
}

fn history(run_id: &str) -> HistoryRecord {
    HistoryRecord {
        time: "2026-12-03T17:00:00Z".into(),
        user: "alice@laptop".into(),
        tool_version: "0.1.0".into(),
        run_id: run_id.into(),
        host: "web-01".into(),
        inventory: "inventory.yaml".into(),
        inventory_hash: "ab".repeat(32),
        git_commit: Some("cd".repeat(20)),
        files: vec![HistoryFile {
            path: "/etc/nginx/nginx.conf".into(),
            change: FileChangeKind::Modify,
        }],
        services: vec![HistoryService {
            service: Service::Nginx,
            action: ServiceAction::Reload,
        }],
        hosts: BTreeMap::from([("web-01".to_string(), "10.0.0.2".to_string())]),
        boot: vec![HistoryBoot {
            service: Service::Nginx,
            action: BootAction::Enable,
        }],
        result: None,
    }
}

fn actions(dir: &str) -> Vec<Action> {
    vec![
        Action {
            service: "nginx".into(),
            action: ServiceAction::Reload,
            check: Some(ServiceCheck {
                live: Some(LiveKind::Nginx),
                tcp: Some(Tcp::Many(vec!["127.0.0.1:80".into()])),
                timeout_s: 15,
                ..ServiceCheck::default()
            }),
            guard: None,
        },
        Action {
            service: "nftables".into(),
            action: ServiceAction::Restart,
            check: Some(ServiceCheck {
                running: Some(true),
                timeout_s: 10,
                ..ServiceCheck::default()
            }),
            guard: Some(FirewallGuardSpec {
                path: format!("{dir}/etc/nftables.conf"),
                seconds: 30,
            }),
        },
    ]
}

fn db_spec() -> DbSpec {
    DbSpec {
        role: DbRole::Primary,
        database: "foobar".into(),
        users: vec![DbUser {
            user: "app".into(),
            host: "10.0.0.%".into(),
            grants: vec!["SELECT, INSERT ON `foobar`.*".into()],
            hash: format!("*{}", "A1".repeat(20)),
        }],
        schema: Some("CREATE TABLE t1 (id INT);".into()),
        tables: vec!["t1".into()],
        replication: Some(ReplicationLogin {
            user: "repl".into(),
            hash: format!("*{}", "B2".repeat(20)),
        }),
    }
}

fn source() -> PrimarySource {
    PrimarySource {
        host: "10.0.0.1".into(),
        port: 3306,
        user: "repl".into(),
        password: Password("s3cret".into()),
    }
}

fn release_tar() -> String {
    use base64::Engine;
    let mut b = tar::Builder::new(Vec::new());
    let body = b"print('hello')\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "app.py", &body[..]).expect("tar");
    base64::engine::general_purpose::STANDARD.encode(b.into_inner().expect("tar"))
}

fn run_samples(dir: &str) -> Vec<Sample> {
    let conf = format!("{dir}/etc/foo.conf");
    let stage = |run_id: &str| Stage {
        run_id: run_id.into(),
        lock: lock(),
        lock_wait_s: 0,
        expect: BTreeMap::from([(conf.clone(), None)]),
        install: vec!["nginx".into()],
        users: vec!["foobar".into()],
        files: vec![StagedFile {
            path: conf.clone(),
            content_b64: "aGVsbG8K".into(),
            mode: "0644".into(),
            owner: "root".into(),
            group: "root".into(),
            service: Service::Nginx,
        }],
        deletes: vec![],
        validate: vec![
            Validator::Nginx(NginxTree {
                root: format!("{dir}/etc"),
                conf: conf.clone(),
                files: vec![conf.clone()],
            }),
            Validator::Haproxy(ConfigFile { path: conf.clone() }),
        ],
        history: history(run_id),
    };
    vec![
        sample(Observe {
            paths: BTreeMap::from([(conf.clone(), "00".repeat(32))]),
            services: vec!["nginx".into()],
            packages: vec!["python3".into()],
            max_content: 1 << 20,
            db: Some(db_spec()),
            release: Some(ReleaseRoot {
                root: format!("{dir}/srv/app"),
            }),
            users: vec!["root".into()],
            haproxy: true,
            certs: vec![format!("{dir}/etc/site.pem")],
            ports: vec![PortWanted {
                port: 1,
                service: "nginx".into(),
                names: vec!["nginx".into()],
            }],
        }),
        sample(stage("run-a")),
        sample(Commit {
            run_id: "run-a".into(),
            files: vec![conf.clone()],
            deletes: vec![],
            actions: actions(dir),
            manifest: vec![ManifestEntry {
                path: conf.clone(),
                sha256: Some("00".repeat(32)),
                mode: "0644".into(),
                owner: "root".into(),
                group: "root".into(),
                service: "nginx".into(),
            }],
            history: history("run-a"),
            boot: vec![BootEntry {
                service: "nginx".into(),
                enable: true,
            }],
        }),
        sample(FirewallGuard {
            run_id: "run-a".into(),
        }),
        sample(FirewallConfirm {
            run_id: "run-a".into(),
        }),
        sample(Rollback {
            run_id: "run-a".into(),
            actions: actions(dir),
            history: HistoryRecord {
                result: Some("rolled-back".into()),
                ..history("run-a")
            },
            force: Some(true),
            lock: Some(lock()),
        }),
        sample(stage("run-b")),
        sample(Abort {
            run_id: "run-b".into(),
        }),
    ]
}

fn database_samples() -> Vec<Sample> {
    let names = || ("foobar".to_string(), "foobar__restore_1".to_string());
    vec![
        sample(DbPrimary { db: db_spec() }),
        sample(DbSeedPrepare { db: db_spec() }),
        sample(DbReplicaStart {
            primary: source(),
            timeout_s: 1,
        }),
        sample(DbReplicaPassword {
            password: Password("n3w".into()),
            timeout_s: 1,
        }),
        sample(DbReplicaRemove {}),
        sample(DbWaitReplica { timeout_s: 1 }),
        sample(DbReplicaRepair {
            read_only: Some(true),
            start_io: Some(ThreadStop { errno: 2003 }),
            start_sql: Some(ThreadStop { errno: 0 }),
            source: Some(source()),
            timeout_s: 1,
        }),
        sample(DbFence {}),
        sample(DbCatchUp {
            gtid: "0-1-5".into(),
            timeout_s: 1,
        }),
        sample(DbPromote {}),
        sample(DbRestoreCheck {
            database: names().0,
        }),
        sample(DbRestorePrepare {
            database: names().0,
            scratch: names().1,
            old: "foobar__replaced_1".into(),
        }),
        sample(DbRestoreSwap {
            database: names().0,
            scratch: names().1,
            old: "foobar__replaced_1".into(),
            tables: vec!["t1".into()],
            lock_wait_s: 10,
        }),
        sample(DbRestoreAbort {
            database: names().0,
            scratch: names().1,
            old: "foobar__replaced_1".into(),
        }),
    ]
}

fn release_samples(dir: &str) -> Vec<Sample> {
    vec![
        sample(ReleaseUpload {
            root: format!("{dir}/srv/app"),
            id: "0123abcd".into(),
            tar_b64: release_tar(),
        }),
        sample(ReleaseSwitch {
            root: format!("{dir}/srv/app"),
            id: "0123abcd".into(),
            keep: 5,
            service: "foobar-app".into(),
            check: HealthCheck {
                port: 80,
                path: "/health".into(),
                host: "web-01".into(),
                timeout_s: 1,
            },
        }),
        sample(HaproxyServer {
            backend: "web".into(),
            server: "web-01".into(),
            state: ServerState::Ready,
            timeout_s: 1,
        }),
        sample(History { last: 5 }),
        sample(super::counters::HaproxyCounters {
            backend: "web".into(),
            response_times: None,
        }),
        sample(super::counters::HaproxyCounters {
            backend: "web".into(),
            response_times: Some(super::counters::ResponseTimes {
                ring: "foobar-response-times".into(),
                since_ms: 1_700_000_000_000,
            }),
        }),
    ]
}

/// The harness's answers to `requests`, in order.
fn through_the_agent(dir: &str, requests: &[Value]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg(format!("{ROOT}/tests/protocol/roundtrip.py"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the hosts run the agent with it)");
    let input = serde_json::to_vec(requests).expect("requests encode");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &input).expect("writes");
    let out = child.wait_with_output().expect("harness ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the harness answers a JSON list")
}

fn ops_of_the_agent() -> Vec<String> {
    let code = "import sys; sys.path.insert(0, 'src/agent'); from foobar_agent.ops import OPS; \
                print('\\n'.join(sorted(OPS)))";
    let out = Command::new("python3")
        .args(["-c", code])
        .current_dir(ROOT)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_operation_of_the_agent_has_a_request_type_and_a_sample() {
    let mut typed: Vec<&str> = OPERATIONS.iter().map(|o| o.op).collect();
    typed.sort();
    assert_eq!(ops_of_the_agent(), typed, "the agent's OPS and OPERATIONS");
    let dir = "/nonexistent";
    let mut sampled: Vec<&str> = run_samples(dir)
        .iter()
        .chain(&database_samples())
        .chain(&release_samples(dir))
        .map(|s| s.op)
        .collect();
    sampled.sort();
    sampled.dedup();
    assert_eq!(sampled, typed, "a round-trip sample per operation");
}

#[test]
fn every_request_round_trips_through_the_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 path").to_string();
    std::fs::create_dir_all(format!("{dir}/etc")).expect("etc");
    let samples: Vec<Sample> = run_samples(&dir)
        .into_iter()
        .chain(database_samples())
        .chain(release_samples(&dir))
        .collect();
    let requests: Vec<Value> = samples.iter().map(|s| s.request.clone()).collect();
    let answers = through_the_agent(&dir, &requests);
    assert_eq!(answers.len(), samples.len());
    for (s, answer) in samples.iter().zip(answers) {
        assert_eq!(
            answer["ok"], true,
            "{}: the agent refused it: {answer}",
            s.op
        );
        let typed = (s.parse)(answer.clone())
            .unwrap_or_else(|e| panic!("{}: the answer does not parse: {e:#}: {answer}", s.op));
        // Every field the agent answers is one the answer type reads.
        for key in answer.as_object().expect("an object").keys() {
            if key != "ok" && answer[key] != Value::Null {
                assert!(
                    typed.get(key).is_some(),
                    "{}: the answer type has no field {key}: {answer}",
                    s.op
                );
            }
        }
    }
}

#[test]
fn a_malformed_request_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 path");
    let cases = [
        (
            json!({"op": "history", "last": "5"}),
            "malformed request: history.last: expected an integer, got a string",
        ),
        (
            json!({"op": "abort"}),
            "malformed request: abort: missing field 'run_id'",
        ),
        (
            json!({"op": "db-fence", "force": true}),
            "malformed request: db-fence: unknown field 'force' (expected none)",
        ),
        (
            json!({"op": "haproxy-server", "backend": "web", "server": "web-01", "state": "up", "timeout_s": 1}),
            "malformed request: haproxy-server.state: expected one of drain, ready, maint, got 'up'",
        ),
    ];
    let requests: Vec<Value> = cases.iter().map(|(r, _)| r.clone()).collect();
    for ((_, want), answer) in cases.iter().zip(through_the_agent(dir, &requests)) {
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["kind"], "request", "{answer}");
        assert_eq!(answer["error"]["message"], *want);
    }
    // Deeper down: a stage file's mode as a number, where the tool sends "0644".
    let mut stage = run_samples(dir)[1].request.clone();
    stage["files"][0]["mode"] = json!(420);
    let answer = &through_the_agent(dir, &[stage])[0];
    assert_eq!(
        answer["error"]["message"],
        "malformed request: stage.files[0].mode: expected a string, got a number"
    );
}

#[test]
fn the_agents_shapes_file_is_generated_from_the_request_types() {
    let path = format!("{ROOT}/src/agent/foobar_agent/shapes.py");
    let want = shapes_python();
    if std::env::var_os("FOOBAR_WRITE_SHAPES").is_some() {
        std::fs::write(&path, &want).expect("writes shapes.py");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "src/agent/foobar_agent/shapes.py is not what src/protocol/*.rs says: run FOOBAR_WRITE_SHAPES=1 cargo test --lib protocol"
    );
}

#[test]
fn design_md_lists_every_operation_as_the_types_say() {
    let design = std::fs::read_to_string(format!("{ROOT}/docs/DESIGN.md")).expect("DESIGN.md");
    assert!(
        design.contains(&design_table()),
        "docs/DESIGN.md's protocol table is not what src/protocol says; it should read:\n{}",
        design_table()
    );
}
