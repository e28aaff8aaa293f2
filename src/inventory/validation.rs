//! The inventory as written (`Raw*`, as serde reads it) checked section by section into
//! the typed [`Inventory`], every error collected with its file, line, column and field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::grammar::{
    self, is_domain, is_duration, is_env_name, is_remote_path, is_size, is_sql_name,
};
use super::hosts::ssh_settings;
use super::raw_secret::RawSecret;
use super::source_map::{Pos, SourceMap};
use super::{
    parse_cidr, AppSettings, Connector, FirewallSettings, Flavor, HaproxySettings, Host, Inventory,
    MonitoringSettings, MysqlSettings, NginxSettings, PoolMode, Role, SecretSource, TlsSettings,
    VipSettings, DB_SECRETS, MONITOR_SECRET,
};

// ---- raw (as written) -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    domain: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    ssh: RawSsh,
    hosts: IndexMap<String, RawHost>,
    #[serde(default)]
    app: AppSettings,
    #[serde(default)]
    nginx: NginxSettings,
    #[serde(default)]
    haproxy: HaproxySettings,
    #[serde(default)]
    mysql: MysqlSettings,
    #[serde(default)]
    tls: Option<TlsSettings>,
    #[serde(default)]
    vip: Option<VipSettings>,
    #[serde(default)]
    firewall: Option<FirewallSettings>,
    #[serde(default)]
    monitoring: Option<MonitoringSettings>,
    #[serde(default)]
    rollout: Option<super::rollout::RawRollout>,
    #[serde(default)]
    secrets: IndexMap<String, RawSecret>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    pub(super) user: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) known_hosts: Option<PathBuf>,
    pub(super) identity_file: Option<PathBuf>,
    pub(super) config_file: Option<PathBuf>,
    pub(super) connect_timeout: Option<u64>,
    pub(super) connector: Option<Connector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) address: String,
    pub(super) roles: Vec<Role>,
    #[serde(default)]
    pub(super) ssh: RawSsh,
    pub(super) server_id: Option<u32>,
}

// ---- validation ---------------------------------------------------------------------

pub(super) struct Validator {
    pub(super) file: String,
    pub(super) map: SourceMap,
    pub(super) messages: Vec<String>,
}

impl Validator {
    /// `FILE:LINE:COL: PATH: MSG`, at the value of `path` (or its nearest parent).
    fn at(&self, path: &str, msg: impl fmt::Display) -> String {
        let pos = self.map.value(path).unwrap_or(Pos { line: 1, col: 1 });
        format!("{}:{}:{}: {path}: {msg}", self.file, pos.line, pos.col)
    }

    pub(super) fn err(&mut self, path: &str, msg: impl fmt::Display) {
        let message = self.at(path, msg);
        self.messages.push(message);
    }

    pub(super) fn check(&mut self, ok: bool, path: &str, msg: impl FnOnce() -> String) {
        if !ok {
            self.err(path, msg());
        }
    }
    /// The typed inventory from the one as written, each section checked in file order;
    /// every error is collected in `self.messages` (the caller refuses the file if any).
    pub(super) fn build(
        &mut self,
        raw: RawInventory,
        path: &Path,
        dir: &Path,
        text: &str,
    ) -> Inventory {
        self.check_domains(&raw.domain, &raw.aliases);
        let hosts = self.hosts(&raw.hosts, &raw.ssh, dir);
        self.check_roles_across(&hosts);
        let app = self.app(&raw.app, dir);
        self.check_haproxy(&raw.haproxy, &hosts);
        self.check_nginx_and_mysql(&raw.nginx, &raw.mysql);
        let secrets = self.secrets(&raw.secrets, dir);
        self.check_database_secrets(&hosts, &raw.secrets);
        let tls = self.tls(raw.tls, &raw.secrets, dir);
        if let Some(v) = &raw.vip {
            self.check_vip(v, &hosts);
        }
        if let Some(f) = &raw.firewall {
            self.check_firewall(f);
        }
        let monitoring = self.monitoring(raw.monitoring.as_ref(), &hosts, &raw.secrets);
        let ssh = ssh_settings(&raw.ssh, &RawSsh::default(), dir);
        let untested = self.untested(raw.mysql.flavor);
        let web = hosts.iter().filter(|h| h.has(Role::Web)).count();
        let rollout = self.rollout(raw.rollout.as_ref(), web);
        Inventory {
            untested,
            rollout,
            ssh,
            path: path.to_path_buf(),
            source_hash: hex::encode(Sha256::digest(text.as_bytes())),
            domain: raw.domain,
            aliases: raw.aliases,
            hosts,
            app,
            nginx: raw.nginx,
            haproxy: raw.haproxy,
            mysql: raw.mysql,
            tls,
            vip: raw.vip,
            firewall: raw.firewall,
            monitoring,
            secrets,
        }
    }

    fn check_domains(&mut self, domain: &str, aliases: &[String]) {
        self.check(is_domain(domain), "domain", || {
            format!("invalid domain name {domain:?}")
        });
        for (i, a) in aliases.iter().enumerate() {
            self.check(is_domain(a), &format!("aliases[{i}]"), || {
                format!("invalid domain name {a:?}")
            });
        }
    }

    /// The app settings, with `source` resolved against the inventory's directory.
    fn app(&mut self, raw: &AppSettings, dir: &Path) -> AppSettings {
        let mut app = raw.clone();
        if let Some(src) = &app.source {
            let resolved = resolve(dir, src);
            if !resolved.is_dir() {
                self.err(
                    "app.source",
                    format!("no such directory: {}", resolved.display()),
                );
            }
            app.source = Some(resolved);
        }
        self.check(is_remote_path(&app.root), "app.root", || {
            format!(
                "app.root must be an absolute path of plain characters, got {:?}",
                app.root
            )
        });
        self.check(is_sql_name(&app.user), "app.user", || {
            format!("invalid user name {:?}", app.user)
        });
        self.check(app.port != 0, "app.port", || "port 0 is not valid".into());
        self.check(app.keep_releases >= 1, "app.keep_releases", || {
            "keep at least 1 release".into()
        });
        app
    }

    fn check_haproxy(&mut self, haproxy: &HaproxySettings, hosts: &[Host]) {
        let hc = &haproxy.health_check;
        self.check(
            grammar::is_url_path(&hc.path),
            "haproxy.health_check.path",
            || {
                format!(
                    "invalid health check path {:?} (a '/' then letters, digits and \
                     '/', '-', '_', '.', '~'; at most 255)",
                    hc.path
                )
            },
        );
        for (field, value) in [
            ("haproxy.health_check.interval", &hc.interval),
            ("haproxy.timeouts.connect", &haproxy.timeouts.connect),
            ("haproxy.timeouts.client", &haproxy.timeouts.client),
            ("haproxy.timeouts.server", &haproxy.timeouts.server),
        ] {
            self.check(is_duration(value), field, || {
                format!("invalid duration {value:?} (e.g. 500ms, 5s, 1m)")
            });
        }
        for (i, p) in haproxy.passive.iter().enumerate() {
            let ok = hosts.iter().any(|h| &h.name == p && h.has(Role::Web));
            self.check(ok, &format!("haproxy.passive[{i}]"), || {
                format!("{p:?} is not a host with the role web")
            });
        }
        if haproxy.mode == PoolMode::ActivePassive {
            let web = hosts.iter().filter(|h| h.has(Role::Web)).count();
            if haproxy.passive.is_empty() || haproxy.passive.len() >= web {
                self.err(
                    "haproxy.mode",
                    "active-passive needs haproxy.passive to name at least one web server and leave at least one active",
                );
            }
        }
    }

    fn check_nginx_and_mysql(&mut self, nginx: &NginxSettings, mysql: &MysqlSettings) {
        self.check(
            is_size(&nginx.client_max_body_size),
            "nginx.client_max_body_size",
            || format!("invalid size {:?} (e.g. 10m)", nginx.client_max_body_size),
        );
        self.check(
            is_size(&mysql.innodb_buffer_pool_size),
            "mysql.innodb_buffer_pool_size",
            || {
                format!(
                    "invalid size {:?} (e.g. 256M)",
                    mysql.innodb_buffer_pool_size
                )
            },
        );
        for (field, value) in [
            ("mysql.database", &mysql.database),
            ("mysql.app_user", &mysql.app_user),
            ("mysql.replication_user", &mysql.replication_user),
        ] {
            self.check(is_sql_name(value), field, || {
                format!("invalid name {value:?} (letters, digits and '_', at most 32)")
            });
        }
    }

    /// Where each secret comes from: exactly one of an environment variable or a file.
    fn secrets(
        &mut self,
        raw: &IndexMap<String, RawSecret>,
        dir: &Path,
    ) -> BTreeMap<String, SecretSource> {
        let mut secrets = BTreeMap::new();
        for (name, s) in raw {
            let sp = format!("secrets.{name}");
            self.check(is_sql_name(name), &sp, || {
                format!("invalid secret name {name:?} (letters, digits and '_')")
            });
            match (&s.env, &s.file) {
                (Some(env), None) => {
                    if is_env_name(env) {
                        secrets.insert(name.clone(), SecretSource::Env(env.clone()));
                    } else {
                        self.err(
                            &format!("{sp}.env"),
                            format!("malformed secret reference: {env:?} is not an environment variable name"),
                        );
                    }
                }
                (None, Some(file)) => {
                    if file.as_os_str().is_empty() {
                        self.err(&format!("{sp}.file"), "malformed secret reference: empty file name");
                    } else {
                        secrets.insert(name.clone(), SecretSource::File(resolve(dir, file)));
                    }
                }
                _ => self.err(
                    &sp,
                    "malformed secret reference: give exactly one of `env: VARIABLE` or `file: PATH`",
                ),
            }
        }
        secrets
    }

    fn check_database_secrets(&mut self, hosts: &[Host], secrets: &IndexMap<String, RawSecret>) {
        if hosts.iter().any(Host::is_db) {
            for needed in DB_SECRETS {
                if !secrets.contains_key(needed) {
                    self.err(
                        "secrets",
                        format!(
                            "secret {needed} is required by the database roles but not defined"
                        ),
                    );
                }
            }
        }
    }

    /// The TLS settings, with the certificate resolved against the inventory's directory.
    fn tls(
        &mut self,
        raw: Option<TlsSettings>,
        secrets: &IndexMap<String, RawSecret>,
        dir: &Path,
    ) -> Option<TlsSettings> {
        let tls = raw.map(|mut t| {
            t.cert = resolve(dir, &t.cert);
            t
        });
        if let Some(t) = &tls {
            if !t.cert.is_file() {
                self.err("tls.cert", format!("no such file: {}", t.cert.display()));
            }
            if !secrets.contains_key(&t.key) {
                self.err(
                    "tls.key",
                    format!(
                        "the key's secret {:?} is not defined under `secrets:`",
                        t.key
                    ),
                );
            }
        }
        tls
    }

    fn check_vip(&mut self, v: &VipSettings, hosts: &[Host]) {
        if hosts.iter().filter(|h| h.has(Role::Lb)).count() < 2 {
            self.err(
                "vip",
                "a floating address needs at least two hosts with the role lb",
            );
        }
        if v.router_id == 0 {
            self.err("vip.router_id", "VRRP router ids are 1 to 255");
        }
        // Linux names: at most 15 bytes (IFNAMSIZ).
        if v.interface.is_empty()
            || v.interface.len() > 15
            || !v
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            self.err(
                "vip.interface",
                format!("invalid interface name {:?}", v.interface),
            );
        }
    }

    fn check_firewall(&mut self, f: &FirewallSettings) {
        if f.admin.is_empty() {
            self.err(
                "firewall.admin",
                "name at least one network allowed to reach SSH (or the tool locks itself out)",
            );
        }
        for (i, c) in f.admin.iter().enumerate() {
            self.check(
                parse_cidr(c).is_some(),
                &format!("firewall.admin[{i}]"),
                || format!("invalid network {c:?} (want ADDRESS/PREFIX, e.g. 192.0.2.0/24)"),
            );
        }
        self.check(
            (5..=3600).contains(&f.rollback_after),
            "firewall.rollback_after",
            || {
                format!(
                    "rollback_after must be 5 to 3600 seconds, got {}",
                    f.rollback_after
                )
            },
        );
    }

    /// The monitoring settings when a host has the role monitor (the defaults if the
    /// section is absent).
    fn monitoring(
        &mut self,
        raw: Option<&MonitoringSettings>,
        hosts: &[Host],
        secrets: &IndexMap<String, RawSecret>,
    ) -> Option<MonitoringSettings> {
        let monitored = hosts.iter().any(|h| h.has(Role::Monitor));
        if raw.is_some() && !monitored {
            self.err(
                "monitoring",
                "monitoring settings but no host has the role monitor",
            );
        }
        let monitoring = monitored.then(|| raw.cloned().unwrap_or_default());
        if let Some(m) = &monitoring {
            for (field, value) in [
                ("monitoring.scrape_interval", &m.scrape_interval),
                ("monitoring.alert_for", &m.alert_for),
            ] {
                self.check(is_duration(value) && !value.ends_with("ms"), field, || {
                    format!("invalid duration {value:?} (e.g. 15s, 1m)")
                });
            }
            self.check(is_sql_name(&m.mysql_user), "monitoring.mysql_user", || {
                format!("invalid name {:?}", m.mysql_user)
            });
            if hosts.iter().any(Host::is_db) && !secrets.contains_key(MONITOR_SECRET) {
                self.err(
                    "secrets",
                    format!("secret {MONITOR_SECRET} is required by the monitor role (the MySQL exporter's account) but not defined"),
                );
            }
        }
        monitoring
    }

    /// Settings `render` accepts but no lab can test end to end.
    fn untested(&self, flavor: Flavor) -> Vec<String> {
        // MySQL 8 is not in Debian's archive, and seeding, backup and restore call
        // MariaDB's tools: its templates are snapshot-tested, never run.
        match flavor {
            Flavor::Mariadb => Vec::new(),
            Flavor::Mysql8 => vec![self.at(
                "mysql.flavor",
                "mysql8 is refused by check, diff, plan and apply: MySQL 8 is not in \
                 Debian's archive, so no lab can test it end to end (seeding, backup and \
                 restore call MariaDB's tools); use `flavor: mariadb` (render still writes \
                 the mysql8 files)",
            )],
        }
    }
}

/// A path as the inventory gives it: `~` is the home directory, and a relative path is
/// relative to the inventory's directory.
pub(super) fn resolve(dir: &Path, p: &Path) -> PathBuf {
    let expanded = expand_home(p);
    if expanded.is_absolute() {
        expanded
    } else {
        dir.join(expanded)
    }
}
fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}
