//! Issue 20's property test of the inventory loader: every string field of the
//! inventory, given values mixed from valid pieces and hostile ones (`}`, `#`, `$`, `%`,
//! `;`, `{{`, newline, ESC, U+202E, quotes, backslash, NUL, ...). A value reaches a
//! rendered file only when it matches that field's grammar (written here, apart from
//! the code), nothing panics, and every refusal takes under 100 ms.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use foobar_infra::inventory::Inventory;
use foobar_infra::templates::Templates;
use proptest::prelude::*;

const HOSTILE: &[&str] = &[
    "}",
    "{",
    "#",
    "$",
    "%",
    ";",
    "{{",
    "{%",
    "\n",
    "\r",
    "\u{1b}",
    "\u{202e}",
    "\"",
    "'",
    "\\",
    "\0",
    " ",
    "\t",
    "`",
    "..",
    "&",
    "|",
    "<",
    ">",
    "*",
    "!",
    "[",
    "]",
    ",",
    ":",
    "@",
    "=",
    "{{secret:db_app_password}}",
    "{{ domain }}",
    "é",
];

const VALID: &[&str] = &[
    "a", "web", "01", "-", "_", ".", "/", "10", "s", "ms", "M", "m", "0", "1.2.3.4", "/24", "::1",
    "x", "db", "health",
];

/// The inventory, with `@NAME@` where each field under test goes; every other field
/// keeps its value from [`FIELDS`].
const TEMPLATE: &str = r#"domain: @domain@
aliases: [@aliases@]
ssh:
  user: @ssh.user@
  known_hosts: @ssh.known_hosts@
  identity_file: @ssh.identity_file@
  config_file: @ssh.config_file@
hosts:
  @hosts.key@:
    address: @hosts.address@
    roles: [lb]
    ssh:
      user: @hosts.ssh.user@
  lb-02:
    address: 10.0.0.2
    roles: [lb]
  web-01:
    address: 10.0.0.11
    roles: [web, db-primary]
  web-02:
    address: 10.0.0.12
    roles: [web, db-replica]
  mon-01:
    address: 10.0.0.20
    roles: [monitor]
app:
  user: @app.user@
  root: @app.root@
nginx:
  client_max_body_size: @nginx.client_max_body_size@
haproxy:
  mode: active-passive
  passive: [@haproxy.passive@]
  health_check:
    path: @haproxy.health_check.path@
    interval: @haproxy.health_check.interval@
  timeouts:
    connect: @haproxy.timeouts.connect@
    client: @haproxy.timeouts.client@
    server: @haproxy.timeouts.server@
mysql:
  database: @mysql.database@
  app_user: @mysql.app_user@
  replication_user: @mysql.replication_user@
  innodb_buffer_pool_size: @mysql.innodb_buffer_pool_size@
vip:
  address: 10.0.0.5
  interface: @vip.interface@
tls:
  cert: @tls.cert@
  key: @tls.key@
firewall:
  admin: [@firewall.admin@]
monitoring:
  scrape_interval: @monitoring.scrape_interval@
  alert_for: @monitoring.alert_for@
  mysql_user: @monitoring.mysql_user@
secrets:
  db_app_password: {env: A}
  db_replication_password: {env: B}
  db_monitor_password: {env: C}
  tls_key: {env: D}
  @secrets.key@: {env: @secrets.env@}
  extra_file: {file: @secrets.file@}
"#;

/// A field: its marker, a valid value, and its grammar (what may reach a file).
struct Field {
    name: &'static str,
    valid: &'static str,
    grammar: fn(&str) -> bool,
}

fn chars(s: &str, min: usize, max: usize, ok: impl Fn(char) -> bool) -> bool {
    (min..=max).contains(&s.len()) && s.chars().all(ok)
}
fn dns(s: &str) -> bool {
    s.split('.').count() >= 2 && s.split('.').all(label)
}
fn label(s: &str) -> bool {
    chars(s, 1, 63, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
}
fn login(s: &str) -> bool {
    chars(s, 1, 32, |c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}
fn sql(s: &str) -> bool {
    chars(s, 1, 32, |c| c.is_ascii_alphanumeric() || c == '_')
}
fn path(s: &str) -> bool {
    s.starts_with('/')
        && chars(s, 1, 255, |c| {
            c.is_ascii_alphanumeric() || "/-_.~".contains(c)
        })
}
fn unit(s: &str, units: &[&str]) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    chars(digits, 1, 20, |c| c.is_ascii_digit()) && units.contains(&&s[digits.len()..])
}
fn duration(s: &str) -> bool {
    unit(s, &["ms", "s", "m", "h", "d", ""])
}
fn size(s: &str) -> bool {
    unit(s, &["k", "K", "m", "M", "g", "G", ""])
}
fn ip(s: &str) -> bool {
    s.trim().parse::<std::net::IpAddr>().is_ok()
}
fn cidr(s: &str) -> bool {
    chars(s, 1, 50, |c| c.is_ascii_hexdigit() || ":./".contains(c))
}
/// A path on the controller: never in a rendered file, never placeholder text.
fn local(s: &str) -> bool {
    !s.contains("{{secret:")
}

const FIELDS: &[Field] = &[
    Field {
        name: "domain",
        valid: "www.example.com",
        grammar: dns,
    },
    Field {
        name: "aliases",
        valid: "example.com",
        grammar: dns,
    },
    Field {
        name: "ssh.user",
        valid: "root",
        grammar: login,
    },
    Field {
        name: "ssh.known_hosts",
        valid: "known_hosts",
        grammar: local,
    },
    Field {
        name: "ssh.identity_file",
        valid: "id_ed25519",
        grammar: local,
    },
    Field {
        name: "ssh.config_file",
        valid: "ssh_config",
        grammar: local,
    },
    Field {
        name: "hosts.key",
        valid: "lb-01",
        grammar: label,
    },
    Field {
        name: "hosts.address",
        valid: "10.0.0.1",
        grammar: ip,
    },
    Field {
        name: "hosts.ssh.user",
        valid: "deploy",
        grammar: login,
    },
    Field {
        name: "app.user",
        valid: "foobar",
        grammar: sql,
    },
    Field {
        name: "app.root",
        valid: "/srv/foobar",
        grammar: path,
    },
    Field {
        name: "nginx.client_max_body_size",
        valid: "10m",
        grammar: size,
    },
    Field {
        name: "haproxy.passive",
        valid: "web-02",
        grammar: label,
    },
    Field {
        name: "haproxy.health_check.path",
        valid: "/health",
        grammar: path,
    },
    Field {
        name: "haproxy.health_check.interval",
        valid: "2s",
        grammar: duration,
    },
    Field {
        name: "haproxy.timeouts.connect",
        valid: "5s",
        grammar: duration,
    },
    Field {
        name: "haproxy.timeouts.client",
        valid: "30s",
        grammar: duration,
    },
    Field {
        name: "haproxy.timeouts.server",
        valid: "30s",
        grammar: duration,
    },
    Field {
        name: "mysql.database",
        valid: "foobar",
        grammar: sql,
    },
    Field {
        name: "mysql.app_user",
        valid: "foobar",
        grammar: sql,
    },
    Field {
        name: "mysql.replication_user",
        valid: "repl",
        grammar: sql,
    },
    Field {
        name: "mysql.innodb_buffer_pool_size",
        valid: "256M",
        grammar: size,
    },
    Field {
        name: "vip.interface",
        valid: "eth0",
        grammar: |s| chars(s, 1, 15, |c| c.is_ascii_alphanumeric() || "._-".contains(c)),
    },
    Field {
        name: "tls.cert",
        valid: "cert.pem",
        grammar: local,
    },
    Field {
        name: "tls.key",
        valid: "tls_key",
        grammar: sql,
    },
    Field {
        name: "firewall.admin",
        valid: "10.0.0.0/24",
        grammar: cidr,
    },
    Field {
        name: "monitoring.scrape_interval",
        valid: "15s",
        grammar: duration,
    },
    Field {
        name: "monitoring.alert_for",
        valid: "30s",
        grammar: duration,
    },
    Field {
        name: "monitoring.mysql_user",
        valid: "exporter",
        grammar: sql,
    },
    Field {
        name: "secrets.key",
        valid: "extra_env",
        grammar: sql,
    },
    Field {
        name: "secrets.env",
        valid: "EXTRA",
        grammar: |s| {
            chars(s, 1, 255, |c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        },
    },
    Field {
        name: "secrets.file",
        valid: "extra.txt",
        grammar: local,
    },
];

/// A YAML double-quoted scalar holding exactly `s`.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A folder with the files the inventory names (certificate, key, config).
fn folder() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("foobar-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/large/tls/www.foobar.com.pem");
        std::fs::copy(pem, dir.join("cert.pem")).unwrap();
        for f in ["known_hosts", "id_ed25519", "ssh_config", "extra.txt"] {
            std::fs::write(dir.join(f), "x\n").unwrap();
        }
        dir
    })
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| Templates::load(None).unwrap())
}

/// The inventory with `value` in field `at`, and every other field valid.
fn inventory(at: usize, value: &str) -> String {
    let mut text = TEMPLATE.to_string();
    for (i, f) in FIELDS.iter().enumerate() {
        let v = if i == at {
            quoted(value)
        } else {
            quoted(f.valid)
        };
        text = text.replace(&format!("@{}@", f.name), &v);
    }
    text
}

/// The CPU time of this thread: the work a refusal costs, whatever else the machine
/// runs at the time (wall time under a parallel build measured scheduling, not us).
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Loads and renders; panics (failing the test) when the property does not hold.
fn check(at: usize, value: &str) {
    let field = &FIELDS[at];
    let text = inventory(at, value);
    let path = folder().join("inventory.yaml");
    let start = thread_cpu_time();
    let rendered = Inventory::parse(&path, &text)
        .map_err(|e| e.to_string())
        .and_then(|inv| foobar_infra::render::render(&inv, templates()).map_err(|e| e.to_string()));
    let took = thread_cpu_time() - start;
    match rendered {
        Err(message) => {
            assert!(
                took < Duration::from_millis(100),
                "{}: refused in {took:?}",
                field.name
            );
            assert!(!message.is_empty());
        }
        Ok(plan) => {
            assert!(
                (field.grammar)(value),
                "{} = {value:?} was accepted",
                field.name
            );
            // A path on the controller may hold any character: it changes no file.
            if LOCAL.contains(&field.name) {
                assert!(
                    files(&plan) == *baseline(),
                    "{} = {value:?} changed a file",
                    field.name
                );
            }
        }
    }
}

/// The fields that name files on the controller, never written into a rendered file.
const LOCAL: &[&str] = &[
    "ssh.known_hosts",
    "ssh.identity_file",
    "ssh.config_file",
    "tls.cert",
    "secrets.file",
];

fn files(plan: &foobar_infra::plan::Plan) -> Vec<(String, String)> {
    let all = plan
        .hosts
        .iter()
        .flat_map(|h| h.files.iter().map(move |f| (h, f)));
    all.map(|(h, f)| (format!("{}:{}", h.name(), f.path), f.content.clone()))
        .collect()
}

/// What every file is with every field valid.
fn baseline() -> &'static Vec<(String, String)> {
    static B: OnceLock<Vec<(String, String)>> = OnceLock::new();
    B.get_or_init(|| {
        let inv = Inventory::parse(&folder().join("inventory.yaml"), &inventory(usize::MAX, ""));
        files(&foobar_infra::render::render(&inv.unwrap(), templates()).unwrap())
    })
}

#[test]
fn every_field_accepts_its_valid_value() {
    for (i, f) in FIELDS.iter().enumerate() {
        let text = inventory(i, f.valid);
        let loaded = Inventory::parse(&folder().join("inventory.yaml"), &text);
        assert!(loaded.is_ok(), "{}: {}", f.name, loaded.err().unwrap());
        assert!((f.grammar)(f.valid), "{}", f.name);
    }
    let inv =
        Inventory::parse(&folder().join("inventory.yaml"), &inventory(usize::MAX, "")).unwrap();
    foobar_infra::render::render(&inv, templates()).unwrap();
}

#[test]
fn every_hostile_character_in_every_field() {
    for (at, field) in FIELDS.iter().enumerate() {
        for (i, h) in HOSTILE.iter().enumerate() {
            let valid = field.valid;
            // First or last (in turn): where a check that looks at one end only fails.
            // The middle is the random test's.
            let value = if (at + i) % 2 == 0 {
                format!("{h}{valid}")
            } else {
                format!("{valid}{h}")
            };
            check(at, &value);
        }
    }
}

fn piece() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        2 => prop::sample::select(VALID),
        1 => prop::sample::select(HOSTILE),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mixed_values_in_any_field(at in 0..FIELDS.len(), pieces in prop::collection::vec(piece(), 0..8)) {
        check(at, &pieces.concat());
    }
}
