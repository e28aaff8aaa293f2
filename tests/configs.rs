//! Rendering without servers: determinism, snapshots of every rendered file, the
//! larger example's shape, and validation by the real tools (`check`; `--strict` under
//! CI=true, where .ci/run installs every validator).

#[path = "support/overrides.rs"]
mod overrides;
#[path = "support/skip.rs"]
mod skip;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use foobar_infra::inventory::Inventory;
use foobar_infra::render::render;
use foobar_infra::templates::Templates;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cli() -> Command {
    let mut c = Command::cargo_bin("foobar-infra").unwrap();
    c.current_dir(root()).env("NO_COLOR", "1");
    c
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn render_twice_gives_identical_trees() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        cli()
            .args(["render", "inventory/inventory.yaml", "--out"])
            .arg(d.path())
            .assert()
            .success();
    }
    let ta = tree(a.path());
    assert_eq!(ta.len(), 13);
    assert!(ta.contains_key("lb-01/etc/haproxy/haproxy.cfg"));
    assert!(ta.contains_key("web-01/etc/nginx/sites-foobar/www.foobar.com.conf"));
    assert!(ta.contains_key("web-02/etc/mysql/mariadb.conf.d/60-foobar.cnf"));
    assert_eq!(ta, tree(b.path()));
}

fn snapshot_inventory(inventory: &str, prefix: &str) {
    let inv = Inventory::load(&root().join(inventory)).unwrap();
    let plan = render(&inv, &Templates::load(None).unwrap()).unwrap();
    for host in &plan.hosts {
        for f in &host.files {
            let name = format!(
                "{prefix}__{}__{}",
                host.name(),
                f.path.trim_start_matches('/').replace('/', "_")
            );
            insta::assert_snapshot!(name, &f.content);
        }
    }
}

#[test]
fn snapshots_of_the_three_server_stack() {
    snapshot_inventory("inventory/inventory.yaml", "base");
}

#[test]
fn snapshots_of_the_larger_example() {
    snapshot_inventory("examples/large/inventory.yaml", "large");
}

#[test]
fn snapshots_of_the_mysql8_flavor() {
    snapshot_inventory("examples/large/inventory-mysql8.yaml", "mysql8");
}

/// `rollout.max_p95_ms` adds the request log's ring to haproxy.cfg (snapshot) and
/// changes nothing else: every other file, and haproxy.cfg without those lines, are the
/// base stack's bytes.
#[test]
fn a_p95_limit_adds_only_the_request_log_ring_to_haproxy_cfg() {
    let templates = Templates::load(None).unwrap();
    let mut inv = Inventory::load(&root().join("inventory/inventory.yaml")).unwrap();
    let base = render(&inv, &templates).unwrap();
    inv.rollout = Some(foobar_infra::inventory::rollout::Rollout {
        max_p95_ms: Some(300),
        ..Default::default()
    });
    let p95 = render(&inv, &templates).unwrap();
    const CFG: &str = "/etc/haproxy/haproxy.cfg";
    let cfg = &p95.host("lb-01").unwrap().file(CFG).unwrap().content;
    insta::assert_snapshot!("p95__lb-01__etc_haproxy_haproxy.cfg", cfg);
    let base_cfg = &base.host("lb-01").unwrap().file(CFG).unwrap().content;
    let (ring_at, ring_end) = (
        cfg.find("\n\n# The canary's p95").unwrap(),
        cfg.find("\n\nfrontend www").unwrap(),
    );
    let log = "\n    # Besides the global log: each request's line (httplog, with %Tr) into the ring.\n    log ring@foobar-response-times local0";
    let without = format!("{}{}", &cfg[..ring_at], &cfg[ring_end..]).replacen(log, "", 1);
    assert_eq!(&without, base_cfg, "only the ring and its log line differ");
    for (a, b) in base.hosts.iter().zip(&p95.hosts) {
        for (fa, fb) in a.files.iter().zip(&b.files) {
            assert!(
                fa.path == CFG || fa.content == fb.content,
                "{} {}",
                a.name(),
                fa.path
            );
        }
        assert_eq!(a.files.len(), b.files.len());
    }
}

#[test]
fn larger_example_has_four_backends_three_server_ids_and_read_only_replicas() {
    let inv = Inventory::load(&root().join("examples/large/inventory.yaml")).unwrap();
    let plan = render(&inv, &Templates::load(None).unwrap()).unwrap();
    for lb in ["lb-01", "lb-02"] {
        let cfg = &plan
            .host(lb)
            .unwrap()
            .file("/etc/haproxy/haproxy.cfg")
            .unwrap()
            .content;
        let servers: Vec<&str> = cfg
            .lines()
            .filter(|l| l.trim_start().starts_with("server web-"))
            .collect();
        assert_eq!(servers.len(), 4, "{cfg}");
        assert!(cfg.contains("balance roundrobin"));
        assert!(servers.iter().all(|s| s.contains(" check")));
    }
    let mut ids = Vec::new();
    for host in ["db-01", "db-02", "web-04"] {
        let cnf = &plan.host(host).unwrap().files[0].content;
        let id = cnf
            .lines()
            .find_map(|l| l.strip_prefix("server-id = "))
            .unwrap()
            .to_string();
        ids.push(id);
        let replica = host != "db-01";
        assert_eq!(cnf.contains("read_only = ON"), replica, "{host}: {cnf}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct server-ids: {ids:?}");
}

/// The validators are installed by .ci/run; outside CI a machine without them skips loudly.
fn validators_present() -> bool {
    let have = ["haproxy", "nginx", "mariadbd"]
        .iter()
        .all(|p| foobar_infra::validate::find_program(p).is_some());
    if !have {
        skip::not_checked(
            "haproxy, nginx or mariadbd is not installed: rendered files not validated",
        );
    }
    have
}

/// Every rendered file passes its validator. Strict (`check --strict`: every file
/// validated) under CI=true; elsewhere a file whose validator is missing here (e.g.
/// prometheus, promtool) is named on the terminal, and every other file must be valid.
#[test]
fn rendered_configs_pass_the_real_validators() {
    if !validators_present() {
        return;
    }
    let strict = skip::ci();
    for inv in ["inventory/inventory.yaml", "examples/large/inventory.yaml"] {
        let mut args = vec!["check", "--json", inv];
        if strict {
            args.insert(1, "--strict");
        }
        let out = cli().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{inv}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["schema"], 1);
        assert_eq!(report["ok"], true);
        let files = report["files"].as_array().unwrap();
        assert!(files.len() >= 7);
        let unchecked: Vec<&serde_json::Value> = files
            .iter()
            .filter(|f| f["status"] == "not-validated")
            .collect();
        assert!(
            files
                .iter()
                .all(|f| f["status"] == "valid" || f["status"] == "not-validated"),
            "{report:#}"
        );
        assert!(unchecked.len() < files.len(), "{report:#}");
        if !unchecked.is_empty() {
            let why: std::collections::BTreeSet<&str> = unchecked
                .iter()
                .map(|f| f["detail"].as_str().unwrap_or("?"))
                .collect();
            skip::not_checked(&format!(
                "{inv}: {} of {} rendered files not validated ({})",
                unchecked.len(),
                files.len(),
                why.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
}

#[test]
fn an_invalid_override_fails_check_naming_template_host_and_tool_message() {
    if !validators_present() {
        return;
    }
    let dir = overrides::broken_nginx_site();
    overrides::override_template(
        &dir,
        "haproxy.cfg",
        "balance {{ lb.balance }}",
        "balance bogus",
    );
    let out = cli()
        .args(["check", "inventory/inventory.yaml", "--templates"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("web-01 /etc/nginx/sites-foobar/www.foobar.com.conf (nginx-site.conf)"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid value \"sixteen\" in \"keepalive\" directive in /etc/nginx/sites-foobar/www.foobar.com.conf:4"), "{stderr}");
    assert!(
        stderr.contains("lb-01 /etc/haproxy/haproxy.cfg (haproxy.cfg)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("parsing [/etc/haproxy/haproxy.cfg:37] : balance only supports"),
        "{stderr}"
    );
    // The valid files are still reported valid.
    assert!(
        stderr.contains("Valid web-01 /etc/mysql/mariadb.conf.d/60-foobar.cnf"),
        "{stderr}"
    );
}

#[test]
fn a_bad_cnf_override_is_caught_by_the_database_server() {
    if !validators_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cnf = std::fs::read_to_string(root().join("templates/mysql-replica.cnf")).unwrap();
    std::fs::write(
        dir.path().join("mysql-replica.cnf"),
        format!("{cnf}no_such_setting = 1\n"),
    )
    .unwrap();
    let out = cli()
        .args(["check", "inventory/inventory.yaml", "--templates"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("web-02 /etc/mysql/mariadb.conf.d/60-foobar.cnf (mysql-replica.cnf)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown variable 'no_such_setting=1'"),
        "{stderr}"
    );
}

#[test]
fn a_template_with_a_missing_variable_names_template_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        "user www-data;\nworker_processes {{ web.workers_typo }};\n",
    )
    .unwrap();
    let out = cli()
        .args(["render", "inventory/inventory.yaml", "--out"])
        .arg(dir.path().join("out"))
        .arg("--templates")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("rendering host web-01"), "{stderr}");
    assert!(stderr.contains("nginx.conf:2: "), "{stderr}");
    assert!(stderr.contains("web.workers_typo"), "{stderr}");
}
