//! Local validation of rendered files for `check`: each file is run through its
//! service's own checker (haproxy -c, nginx -t on a temporary prefix, the database
//! server's option parsing; argv from the service table, src/services.rs, where the
//! hosts run the same) when that program is installed on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::plan::{HostPlan, ManagedFile, Plan, Service};
use crate::render::paths;
use crate::services;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// The validator's own output, with temporary paths replaced by install paths.
    Invalid(String),
    /// Why no validator ran (e.g. "haproxy not found").
    NotValidated(String),
}

#[derive(Debug, Clone)]
pub struct FileResult {
    pub host: String,
    pub path: String,
    pub template: String,
    pub validator: String,
    pub verdict: Verdict,
}

/// Finds a program in PATH or the sbin directories (validators live in /usr/sbin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Validates every host's files, hosts in parallel.
pub fn validate_plan(plan: &Plan) -> Result<Vec<FileResult>> {
    let per_host: Vec<Result<Vec<FileResult>>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .hosts
            .iter()
            .map(|h| s.spawn(move || validate_host(h)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("validator thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in per_host {
        all.extend(r?);
    }
    Ok(all)
}

/// A shell script's syntax (`sh -n`).
fn validate_sh(f: &ManagedFile) -> Result<(String, Verdict)> {
    let (_, v) = run_file_validator(f, "sh", |prog, file| {
        let mut c = Command::new(prog);
        c.arg("-n").arg(file);
        c
    })?;
    Ok(("sh -n".into(), v))
}

/// The firewall's ruleset, with the validator the service table names (`nft -c`).
fn validate_nft(f: &ManagedFile) -> Result<(String, Verdict)> {
    let (program, args) = services::file_last_validator(Service::Firewall)
        .context("the service table names nft's validator")?;
    let (_, v) = run_file_validator(f, program, |prog, file| {
        let mut c = Command::new(prog);
        c.args(args).arg(file);
        c
    })?;
    // nft needs CAP_NET_ADMIN even to check: without it, say so rather
    // than call the file invalid.
    let v = match v {
        Verdict::Invalid(t) if t.contains("Operation not permitted") => {
            Verdict::NotValidated("nft -c needs CAP_NET_ADMIN (run as root)".into())
        }
        v => v,
    };
    Ok(("nft -c".into(), v))
}

fn validate_host(h: &HostPlan) -> Result<Vec<FileResult>> {
    let mut results = Vec::new();
    let nginx: Vec<&ManagedFile> = h
        .files
        .iter()
        .filter(|f| f.service == Service::Nginx)
        .collect();
    if !nginx.is_empty() {
        results.extend(validate_nginx(h.name(), &nginx)?);
    }
    for f in &h.files {
        let r = match f.service {
            Service::Nginx => continue,
            Service::Haproxy if f.path.ends_with(".pem") => validate_certificate(f)?,
            Service::Haproxy => table_validator(f, &h.files, Service::Haproxy)?,
            Service::Mariadb => validate_mariadb_cnf(f)?,
            Service::Mysql => validate_mysql8_cnf(f)?,
            Service::Keepalived if f.path.ends_with("haproxy-alive") => validate_sh(f)?,
            Service::Keepalived => table_validator(f, &h.files, Service::Keepalived)?,
            Service::Firewall if f.path.ends_with(".nft") => validate_nft(f)?,
            Service::Prometheus if f.path == paths::PROMETHEUS_YML => {
                table_validator(f, &h.files, Service::Prometheus)?
            }
            Service::Prometheus => {
                let (_, v) = run_file_validator(f, "promtool", |prog, file| {
                    let mut c = Command::new(prog);
                    c.args(["check", "rules"]).arg(file);
                    c
                })?;
                ("promtool check rules".into(), v)
            }
            Service::BlackboxExporter if f.path == paths::BLACKBOX_YML => {
                let svc = Service::BlackboxExporter;
                let (_, v) = run_file_validator(f, &table_program(svc), |prog, file| {
                    table_command(svc, prog, file)
                })?;
                ("prometheus-blackbox-exporter --config.check".into(), v)
            }
            Service::App | Service::Firewall | Service::MysqldExporter
                if f.path.ends_with(".ini")
                    || f.path.ends_with(".service")
                    || f.path == paths::MYSQLD_EXPORTER_CNF =>
            {
                let (_, v) = run_file_validator(f, "python3", |prog, file| {
                    let mut c = Command::new(prog);
                    c.arg("-c")
                        .arg("import configparser,sys; configparser.ConfigParser(strict=False, interpolation=None).read_file(open(sys.argv[1]))")
                        .arg(file);
                    c
                })?;
                ("ini syntax (python3 configparser)".into(), v)
            }
            Service::App
            | Service::Firewall
            | Service::NodeExporter
            | Service::NginxExporter
            | Service::MysqldExporter
            | Service::BlackboxExporter => validate_sh(f)?,
        };
        results.push(FileResult {
            host: h.name().to_string(),
            path: f.path.clone(),
            template: f.template.clone(),
            validator: r.0,
            verdict: r.1,
        });
    }
    Ok(results)
}

/// Writes `f` to a temporary file and runs `make(program, file)`; exit 0 means valid.
/// `svc`'s validator program, as the service table names it (src/services.rs).
fn table_program(svc: Service) -> String {
    services::validator_argv(svc, "")
        .and_then(|argv| argv.into_iter().next())
        .unwrap_or_default()
}

/// `svc`'s validator from the service table, run as `prog` on `file`.
fn table_command(svc: Service, prog: &Path, file: &Path) -> Command {
    let argv = services::validator_argv(svc, &file.display().to_string()).unwrap_or_default();
    let mut c = Command::new(prog);
    c.args(argv.iter().skip(1));
    c
}

fn run_file_validator(
    f: &ManagedFile,
    program: &str,
    make: impl Fn(&Path, &Path) -> Command,
) -> Result<(String, Verdict)> {
    let Some(prog) = find_program(program) else {
        return Ok((
            program.into(),
            Verdict::NotValidated(format!("{program} not found")),
        ));
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let file = dir
        .path()
        .join(Path::new(&f.path).file_name().unwrap_or_default());
    std::fs::write(&file, &f.content).with_context(|| format!("writing {}", file.display()))?;
    let out = make(&prog, &file)
        .output()
        .with_context(|| format!("running {}", prog.display()))?;
    let text = combined(&out).replace(&file.display().to_string(), &f.path);
    let verdict = if out.status.success() {
        Verdict::Valid
    } else {
        Verdict::Invalid(text)
    };
    Ok((format!("{program} -c"), verdict))
}

fn combined(out: &std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s.trim_end().to_string()
}

/// nginx -t on a temporary copy of the host's /etc/nginx tree (nginx.conf includes the
/// sites relative to its own directory).
fn validate_nginx(host: &str, files: &[&ManagedFile]) -> Result<Vec<FileResult>> {
    let row = |f: &ManagedFile, v: Verdict| FileResult {
        host: host.to_string(),
        path: f.path.clone(),
        template: f.template.clone(),
        validator: "nginx -t".into(),
        verdict: v,
    };
    let Some(prog) = find_program("nginx") else {
        return Ok(files
            .iter()
            .map(|f| row(f, Verdict::NotValidated("nginx not found".into())))
            .collect());
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    for f in files {
        let rel = f.path.strip_prefix(paths::NGINX_ROOT).unwrap_or(&f.path);
        let dest = dir.path().join(rel.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&dest, &f.content).with_context(|| format!("writing {}", dest.display()))?;
    }
    let conf = dir.path().join("nginx.conf");
    let out = Command::new(&prog)
        .arg("-t")
        .arg("-q")
        .arg("-c")
        .arg(&conf)
        .output()
        .with_context(|| format!("running {}", prog.display()))?;
    let text = combined(&out).replace(&dir.path().display().to_string(), paths::NGINX_ROOT);
    if out.status.success() {
        return Ok(files.iter().map(|f| row(f, Verdict::Valid)).collect());
    }
    // Blame the file nginx names; if it names none of ours, all of them.
    let named: Vec<bool> = files
        .iter()
        .map(|f| text.contains(&format!(" in {}:", f.path)))
        .collect();
    let any = named.iter().any(|n| *n);
    Ok(files
        .iter()
        .zip(named)
        .map(|(f, n)| {
            if n || !any {
                row(f, Verdict::Invalid(text.clone()))
            } else {
                row(f, Verdict::Valid)
            }
        })
        .collect())
}

/// MariaDB parses a .cnf without starting with `--help --verbose`: exit 7 for an unknown
/// variable, 13 for a bad value; an out-of-range number only warns "adjusted", so the
/// warnings count too.
fn validate_mariadb_cnf(f: &ManagedFile) -> Result<(String, Verdict)> {
    let name = "mariadbd --help --verbose".to_string();
    let program = table_program(Service::Mariadb);
    let Some(prog) = find_program(&program) else {
        return Ok((name, Verdict::NotValidated(format!("{program} not found"))));
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let file = dir.path().join("60-foobar.cnf");
    std::fs::write(&file, &f.content).with_context(|| format!("writing {}", file.display()))?;
    let out = table_command(Service::Mariadb, &prog, &file)
        .output()
        .with_context(|| format!("running {}", prog.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), &f.path);
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("[ERROR]") || l.contains("adjusted") || l.contains("unknown variable")
        })
        .collect();
    let verdict = if out.status.success() && bad.is_empty() {
        Verdict::Valid
    } else if bad.is_empty() {
        Verdict::Invalid(format!("exit status {}: {}", out.status, stderr.trim()))
    } else {
        Verdict::Invalid(bad.join("\n"))
    };
    Ok((name, verdict))
}

/// MySQL 8 has `--validate-config`; MariaDB's server does not speak the MySQL 8 form.
fn validate_mysql8_cnf(f: &ManagedFile) -> Result<(String, Verdict)> {
    let is_mysql8 = find_program("mysqld").is_some_and(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| {
                let v = String::from_utf8_lossy(&o.stdout);
                !v.contains("MariaDB") && v.contains(" 8.")
            })
            .unwrap_or(false)
    });
    if !is_mysql8 {
        return Ok((
            "mysqld --validate-config".into(),
            Verdict::NotValidated("MySQL 8 server (mysqld) not found".into()),
        ));
    }
    run_file_validator(f, &table_program(Service::Mysql), |prog, file| {
        table_command(Service::Mysql, prog, file)
    })
}

/// A self-signed certificate and key, for checking a config whose real key is a secret.
fn stand_in_pem(dir: &Path) -> Result<Option<String>> {
    let Some(openssl) = find_program("openssl") else {
        return Ok(None);
    };
    let (key, cert) = (dir.join("stand-in.key"), dir.join("stand-in.crt"));
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=stand-in",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}{}",
        std::fs::read_to_string(&cert)?,
        std::fs::read_to_string(&key)?
    )))
}

/// `PROGRAM CHECK -f CONFIG` (haproxy -c, keepalived -t) on the config, with the files
/// it names (a certificate, a check script) beside it; a certificate whose key is a
/// secret is replaced by a stand-in.
/// [`validate_with_files`] with the service's validator from the service table
/// (src/services.rs), as the agent runs it on the hosts.
fn table_validator(
    f: &ManagedFile,
    files: &[ManagedFile],
    svc: Service,
) -> Result<(String, Verdict)> {
    let (program, args) = services::file_last_validator(svc)
        .with_context(|| format!("the service table names {svc:?}'s validator, the file last"))?;
    validate_with_files(f, files, program, args)
}

fn validate_with_files(
    f: &ManagedFile,
    files: &[ManagedFile],
    program: &str,
    args: &[&str],
) -> Result<(String, Verdict)> {
    let name = format!("{program} {}", args.join(" "));
    let Some(prog) = find_program(program) else {
        return Ok((name, Verdict::NotValidated(format!("{program} not found"))));
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut text = f.content.clone();
    let mut label = name.clone();
    for other in files
        .iter()
        .filter(|o| o.path != f.path && f.content.contains(&o.path))
    {
        let dest = dir
            .path()
            .join(Path::new(&other.path).file_name().unwrap_or_default());
        let content = if crate::secrets::placeholders_in(&other.content).is_empty() {
            other.content.clone()
        } else {
            match stand_in_pem(dir.path())? {
                Some(pem) => {
                    label = format!("{name} (stand-in certificate: the key is a secret)");
                    pem
                }
                None => {
                    return Ok((
                        name,
                        Verdict::NotValidated(
                            "openssl not found (for a stand-in certificate)".into(),
                        ),
                    ))
                }
            }
        };
        std::fs::write(&dest, content)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(other.mode))?;
        }
        text = text.replace(&other.path, &dest.display().to_string());
    }
    let cfg = dir.path().join("config");
    std::fs::write(&cfg, &text)?;
    let out = Command::new(prog)
        .args(args)
        .arg(&cfg)
        .output()
        .with_context(|| format!("running {program}"))?;
    let mut report = combined(&out).replace(&cfg.display().to_string(), &f.path);
    for other in files {
        let tmp = dir
            .path()
            .join(Path::new(&other.path).file_name().unwrap_or_default());
        report = report.replace(&tmp.display().to_string(), &other.path);
    }
    let verdict = if out.status.success() {
        Verdict::Valid
    } else {
        Verdict::Invalid(report)
    };
    Ok((label, verdict))
}

/// The certificate part of a PEM: it parses and has not expired.
fn validate_certificate(f: &ManagedFile) -> Result<(String, Verdict)> {
    let name = "openssl x509 -checkend 0".to_string();
    let Some(openssl) = find_program("openssl") else {
        return Ok((name, Verdict::NotValidated("openssl not found".into())));
    };
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, &f.content)?;
    let out = Command::new(openssl)
        .args(["x509", "-noout", "-checkend", "0", "-in"])
        .arg(&cert)
        .output()
        .context("running openssl")?;
    let verdict = if out.status.success() {
        Verdict::Valid
    } else {
        Verdict::Invalid(format!(
            "the certificate does not parse or has expired: {}",
            combined(&out)
        ))
    };
    Ok((name, verdict))
}
