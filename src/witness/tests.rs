//! Unit tests of the witness (src/witness.rs), and the helpers other modules' tests use.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// web-02 of the lab inventory as a web server only (no replica): a host with a witness.
pub(crate) fn web_only() -> (HostPlan, Secrets) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let inv = crate::inventory::Inventory::load(&root.join("lab/inventory.yaml")).unwrap();
    let templates = crate::templates::Templates::load(None).unwrap();
    let plan = crate::render::render(&inv, &templates).unwrap();
    let mut hp = plan.host("web-02").unwrap().clone();
    hp.db = None;
    hp.files.retain(|f| !f.service.is_database());
    hp.services.retain(|s| !s.is_database());
    let names: Vec<String> = hp
        .files
        .iter()
        .flat_map(|f| crate::secrets::placeholders_in(&f.content))
        .collect();
    let values: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "s3cret")).collect();
    (hp, Secrets::with(&values))
}

#[test]
fn the_state_it_stands_for_diffs_as_in_sync_under_either_init() {
    use crate::diff::diff_host;
    let (hp, secrets) = web_only();
    let w = Witness::for_host(&hp, &secrets)
        .unwrap()
        .expect("a web server has one");
    for init in INITS {
        let seen = InSync {
            init,
            hostname: "web-02".into(),
            pids: vec![("nginx".into(), 42)],
        };
        let st = w.state(&seen);
        let hc = diff_host(&hp, &st, &secrets).unwrap();
        assert!(hc.is_empty(), "{init:?}: {hc:?}");
        assert!(hc.services.is_empty() && hc.create_users.is_empty() && hc.install.is_empty());
        // What commit would record is what the script compares the manifest with.
        assert_eq!(hc.manifest, w.manifest(init));
        assert_eq!(st.services["nginx"].pid, Some(42));

        // The manifest in another order is the same manifest.
        let mut reordered = st.clone();
        reordered.manifest.reverse();
        assert!(diff_host(&hp, &reordered, &secrets).unwrap().is_empty());
        // Files as planned but no manifest (put there by hand or another tool), or one
        // that lists a file gone since: apply records the manifest, nothing else.
        let mut stale = st.clone();
        stale.manifest.push(ManifestEntry {
            path: "/etc/nginx/conf.d/gone.conf".into(),
            ..st.manifest[0].clone()
        });
        for other in [
            HostState {
                manifest: Vec::new(),
                ..st.clone()
            },
            stale,
        ] {
            let hc = diff_host(&hp, &other, &secrets).unwrap();
            assert!(hc.record_manifest && !hc.is_empty(), "{init:?}: {hc:?}");
            assert!(hc.files.is_empty() && hc.services.is_empty());
            assert_eq!(hc.manifest, w.manifest(init));
        }
    }
}

#[test]
fn hosts_it_cannot_vouch_for_get_none() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let inv = crate::inventory::Inventory::load(&root.join("lab/inventory.yaml")).unwrap();
    let templates = crate::templates::Templates::load(None).unwrap();
    let plan = crate::render::render(&inv, &templates).unwrap();
    let (_, secrets) = web_only();
    // lb-01: HAProxy's runtime view; web-01, web-02: replication state.
    for hp in &plan.hosts {
        assert!(
            Witness::for_host(hp, &secrets).unwrap().is_none(),
            "{}",
            hp.name()
        );
    }
    let (mut hp, secrets) = web_only();
    hp.files[0].path = "/etc/nginx/a file".into();
    assert!(
        Witness::for_host(&hp, &secrets).unwrap().is_none(),
        "a space"
    );
    let (mut hp, secrets) = web_only();
    hp.files[0].owner = "o\"wner".into();
    assert!(
        Witness::for_host(&hp, &secrets).unwrap().is_none(),
        "a quote"
    );
}

/// The pid files it checks are the service table's: change the table, and the
/// witness checks the other file.
#[test]
fn its_pid_files_are_the_service_tables() {
    let (hp, secrets) = web_only();
    let pid_of = |table: &[crate::services::ServiceSpec]| {
        let w = Witness::for_host_in(&hp, &secrets, table).unwrap().unwrap();
        w.services
            .iter()
            .find(|(unit, _)| unit == "nginx")
            .and_then(|(_, p)| p.clone())
    };
    let real = crate::services::SERVICES;
    assert_eq!(pid_of(real).as_deref(), Some("/run/nginx.pid"));
    let mut table = real.to_vec();
    for row in &mut table {
        if row.service == crate::plan::Service::Nginx {
            row.pid_file = Some("/run/elsewhere/nginx.pid");
        }
    }
    assert_eq!(pid_of(&table).as_deref(), Some("/run/elsewhere/nginx.pid"));
    let w = Witness::for_host_in(&hp, &secrets, &table)
        .unwrap()
        .unwrap();
    assert!(
        w.args()
            .iter()
            .any(|a| a.starts_with("nginx=/run/elsewhere/nginx.pid")),
        "the script is given the table's pid file"
    );
}

#[test]
fn answers_parse() {
    let s = parse_in_sync(b"foobar-in-sync sysv web-03 nginx=12 foobar-app=345\n").unwrap();
    assert_eq!(s.init, Init::Sysv);
    assert_eq!(s.hostname, "web-03");
    assert_eq!(s.pids, [("nginx".into(), 12), ("foobar-app".into(), 345)]);
    assert!(parse_in_sync(b"{\"ok\": true}\n").is_none());
    assert!(parse_in_sync(b"foobar-in-sync upstart h\n").is_none());
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A witness over files in a temporary directory, as a host in sync has them.
struct Local {
    dir: tempfile::TempDir,
    w: Witness,
    init: Init,
}

fn local() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    assert!(plain_path(&d), "a plain temporary path: {d}");
    let (owner, group) = (id("-un"), id("-gn"));
    let file = |name: &str, body: &str, mode: u32, init: Option<Init>| WitnessFile {
        path: format!("{d}/{name}"),
        sha256: sha256_hex(body.as_bytes()),
        size: body.len() as u64,
        mode,
        owner: owner.clone(),
        group: group.clone(),
        service: "nginx".into(),
        init,
    };
    let files = vec![
        file("site.conf", "server { listen 80; }\n", 0o644, None),
        file("app.ini", "password = s3cret\n", 0o640, None),
        file("empty", "", 0o600, None),
        file("app.init", "#!/bin/sh\n", 0o755, Some(Init::Sysv)),
        file("app.service", "[Unit]\n", 0o644, Some(Init::Systemd)),
    ];
    let init = if std::path::Path::new("/run/systemd/system").is_dir() {
        Init::Systemd
    } else {
        Init::Sysv
    };
    let bodies = [
        "server { listen 80; }\n",
        "password = s3cret\n",
        "",
        "#!/bin/sh\n",
        "[Unit]\n",
    ];
    for (f, body) in files.iter().zip(bodies) {
        if f.init.is_some_and(|i| i != init) {
            continue; // the other init's file is not on this host
        }
        std::fs::write(&f.path, body).unwrap();
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(f.mode)).unwrap();
    }
    // A service whose pid file names this test's process (sysv: the script reads it).
    let pidfile = format!("{d}/svc.pid");
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    std::fs::create_dir_all(format!("{d}/releases/abc123")).unwrap();
    std::os::unix::fs::symlink("releases/abc123/", format!("{d}/current")).unwrap();
    // The services the tests name start at boot (as `update-rc.d NAME defaults` links
    // them; the init scripts themselves are not needed).
    std::fs::create_dir_all(format!("{d}/etc/rc2.d")).unwrap();
    for name in ["svc", "nginx"] {
        let link = format!("{d}/etc/rc2.d/S01{name}");
        std::os::unix::fs::symlink(format!("../init.d/{name}"), link).unwrap();
    }
    let w = Witness {
        files,
        manifest_path: format!("{d}/manifest.json"),
        services: if init == Init::Sysv {
            vec![("svc".into(), Some(pidfile))]
        } else {
            vec![]
        },
        packages: if std::path::Path::new("/var/lib/dpkg/info/dpkg.list").exists() {
            vec!["dpkg".into()]
        } else {
            vec![]
        },
        users: vec![owner.clone()],
        release: Some((d.clone(), "abc123".into())),
        etc: format!("{d}/etc"),
    };
    let manifest = w.manifest_bytes(init);
    std::fs::write(&w.manifest_path, manifest).unwrap();
    std::fs::set_permissions(&w.manifest_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Local { dir, w, init }
}

/// Runs the script as the transport does (`sh -c`), with a stand-in agent that
/// prints what it was given on stdin.
fn run(w: &Witness) -> String {
    let check = w.check();
    let mut argv = check.argv.clone();
    argv.extend(["sh", "-c", "echo AGENT; cat"].map(String::from));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = check.first_line.clone();
    input.extend_from_slice(b"SCRIPT-AND-REQUEST\n");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_script_vouches_for_a_host_in_sync_and_hands_anything_else_to_the_agent() {
    if id("-un") != "root" {
        eprintln!("skipped: the manifest is root's (run as root)");
        return;
    }
    let Local { dir, w, init } = local();
    let d = dir.path().to_str().unwrap();
    let out = run(&w);
    let seen = parse_in_sync(out.as_bytes()).unwrap_or_else(|| panic!("in sync: {out}"));
    assert_eq!(seen.init, init);
    if init == Init::Sysv {
        assert_eq!(seen.pids, [("svc".to_string(), std::process::id() as u64)]);
    }

    // Each drift, alone, goes to the agent, which gets the rest of stdin intact.
    let agent = "AGENT\nSCRIPT-AND-REQUEST\n";
    type Step<'a> = Box<dyn Fn() + 'a>;
    let drifts: Vec<(&str, Step, Step)> = vec![
        (
            "content",
            Box::new(|| {
                std::fs::write(format!("{d}/site.conf"), "server { listen 81; }\n").unwrap()
            }),
            Box::new(|| {
                std::fs::write(format!("{d}/site.conf"), "server { listen 80; }\n").unwrap()
            }),
        ),
        (
            "mode",
            Box::new(|| {
                std::fs::set_permissions(
                    format!("{d}/app.ini"),
                    std::fs::Permissions::from_mode(0o644),
                )
                .unwrap()
            }),
            Box::new(|| {
                std::fs::set_permissions(
                    format!("{d}/app.ini"),
                    std::fs::Permissions::from_mode(0o640),
                )
                .unwrap()
            }),
        ),
        (
            "missing",
            Box::new(|| std::fs::rename(format!("{d}/empty"), format!("{d}/empty.x")).unwrap()),
            Box::new(|| std::fs::rename(format!("{d}/empty.x"), format!("{d}/empty")).unwrap()),
        ),
        (
            "manifest",
            Box::new(|| std::fs::write(format!("{d}/manifest.json"), "[]\n").unwrap()),
            Box::new(|| {
                std::fs::write(format!("{d}/manifest.json"), w.manifest_bytes(init)).unwrap()
            }),
        ),
        (
            "release",
            Box::new(|| {
                std::fs::remove_file(format!("{d}/current")).unwrap();
                std::os::unix::fs::symlink("releases/def456", format!("{d}/current")).unwrap();
            }),
            Box::new(|| {
                std::fs::remove_file(format!("{d}/current")).unwrap();
                std::os::unix::fs::symlink("releases/abc123", format!("{d}/current")).unwrap();
            }),
        ),
        (
            "a symlink for a file",
            Box::new(|| {
                std::fs::rename(format!("{d}/site.conf"), format!("{d}/site.real")).unwrap();
                std::os::unix::fs::symlink(format!("{d}/site.real"), format!("{d}/site.conf"))
                    .unwrap();
            }),
            Box::new(|| {
                std::fs::rename(format!("{d}/site.real"), format!("{d}/site.conf")).unwrap()
            }),
        ),
    ];
    for (what, break_it, mend) in &drifts {
        break_it();
        assert_eq!(run(&w), agent, "{what}");
        mend();
        assert!(run(&w).starts_with("foobar-in-sync "), "{what} mended");
    }
    // A service off at boot (`update-rc.d svc disable` turns its S links into K links).
    if init == Init::Sysv {
        assert!(w.args().contains(&format!("{d}/etc=svc")));
        let rc = format!("{d}/etc/rc2.d");
        std::fs::rename(format!("{rc}/S01svc"), format!("{rc}/K01svc")).unwrap();
        assert_eq!(run(&w), agent, "off at boot");
        std::fs::rename(format!("{rc}/K01svc"), format!("{rc}/S01svc")).unwrap();
        assert!(run(&w).starts_with("foobar-in-sync "), "on at boot again");
    }
    // A service not running (sysv: its pid file names no live process).
    if init == Init::Sysv {
        std::fs::write(format!("{d}/svc.pid"), "999999999\n").unwrap();
        assert_eq!(run(&w), agent, "service");
    }
    let mut other = w.clone();
    other.users = vec!["no-such-user-here".into()];
    assert_eq!(run(&other), agent, "user");
    let mut other = w.clone();
    other.packages = vec!["no-such-package".into()];
    assert_eq!(run(&other), agent, "package");
}

#[test]
fn a_pid_file_vouches_only_for_a_process_of_the_services_name() {
    let Local { dir, mut w, init } = local();
    if id("-un") != "root" || init != Init::Sysv {
        eprintln!("skipped: needs root (the manifest is root's) and no systemd");
        return;
    }
    let d = dir.path().to_str().unwrap();
    // nginx's pid file names a live process that is not nginx (this test): another
    // process may then hold :80, so the agent looks.
    w.services = vec![("nginx".into(), Some(format!("{d}/svc.pid")))];
    assert!(w.args().contains(&format!("nginx={d}/svc.pid=nginx")));
    assert_eq!(run(&w), "AGENT\nSCRIPT-AND-REQUEST\n");
    // A process called nginx: vouched for.
    std::fs::copy("/bin/sleep", format!("{d}/nginx")).unwrap();
    let mut nginx = Command::new(format!("{d}/nginx"))
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(format!("{d}/svc.pid"), format!("{}\n", nginx.id())).unwrap();
    let out = run(&w);
    let _ = nginx.kill();
    let _ = nginx.wait();
    let seen = parse_in_sync(out.as_bytes()).unwrap_or_else(|| panic!("in sync: {out}"));
    assert_eq!(seen.pids, [("nginx".to_string(), nginx.id() as u64)]);
}
