//! The witness: a fast no-op check that runs before the agent, in the same remote
//! command. A fixed POSIX `sh` script (no Python start, a handful of coreutils) looks at
//! what a host in sync must show (every planned file's type, mode, owner and sha256; the
//! managed-file manifest byte for byte; the services running; the packages and users
//! present; the current release) and compares a digest of it with the one this module
//! computes from the plan. Equal: the host answers one line and no agent starts, and the
//! tool takes the plan itself as the host's observed state. Anything else, including
//! anything the script cannot tell: it `exec`s the agent, which reads the rest of stdin as
//! usual (a full observe, no extra round trip).
//!
//! Only hosts whose whole observed state the script can vouch for get a witness: no
//! database role (replication state), no load balancer (HAProxy's runtime view), no
//! certificates (expiry dates), and only names and paths of plain characters. The
//! expected digests travel on stdin (they hash files that may hold secrets); argv holds
//! paths, service, package and user names only.

use anyhow::Result;

use crate::diff::sha256_hex;
use crate::inventory::Role;
use crate::plan::{HostPlan, Init};
use crate::remote::agent::{FileState, HostState, ManifestEntry, ReleaseState, ServiceState};
use crate::remote::Check;
use crate::secrets::Secrets;

/// The agent's manifest of managed files (the agent's paths.py: MANIFEST, written by `commit`).
pub const MANIFEST: &str = "/var/lib/foobar-infra/manifest.json";

/// The first word of the script's answer when the host is in sync.
pub const IN_SYNC: &str = "foobar-in-sync";

/// The script: `sh -c SCRIPT foobar-witness ITEM... -- AGENT-ARGV...`, stdin's first
/// line "DIGEST-SYSV DIGEST-SYSTEMD". Items are pairs: `f PATH` (a file, any init),
/// `f:sysv PATH` / `f:systemd PATH` (that init only), `s NAME=PIDFILE[=PROCESSES]`
/// (running: the pid file's process is alive, and its name (`/proc/PID/comm`) starts
/// with one of the comma-separated PROCESSES when given, or `service NAME status`
/// without a pid file; `systemctl is-active` under systemd), `k PACKAGE` (dpkg's file
/// list present), `u USER` (in /etc/passwd, else getent), `r ROOT=ID` (ROOT/current
/// leads to release ID). The digest is the sha256 of "init INIT", then `stat` and
/// `sha256sum` of the files, in item order. Same rules as the agent's observe; where
/// they could differ the script answers "not sure" and the agent decides.
///
/// Ports (src/run/preflight.rs): a service that runs holds the port it needs (nginx's
/// 80, gunicorn's `app.port`), and Linux then lets no other process listen on an
/// overlapping address (neither sets SO_REUSEPORT), so a host whose services run has
/// no port conflict to report. That holds only if the pid file's process is the
/// service: a stale pid file whose number another process took proves nothing, hence
/// the PROCESSES check (one `read` builtin; systemd tracks the unit's processes itself).
///
/// Boot (src/boot.rs): `b ETC=NAME`, NAME starts at boot: an `S??NAME` link in
/// ETC/rc2.d; under systemd a link in ETC/systemd/system/*.wants/ and none for
/// NAME.service itself in ETC/systemd/system or /run/systemd/system (a mask, or an alias:
/// "not sure"). Links and globs only: `systemctl is-enabled` would be one more process
/// (~7 ms of CPU) per host.
pub const SCRIPT: &str = r#"set -f
IFS=' '
agent() {
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do shift; done
    [ "$#" -gt 0 ] && shift
    exec "$@"
}
# Whether process $1's name starts with one of the comma-separated names $2 (none: yes).
named() {
    [ -z "$2" ] && return 0
    c=
    [ -r "/proc/$1/comm" ] && read -r c <"/proc/$1/comm" || return 1
    IFS=,
    for m in $2; do
        case $c in "$m"*) IFS=' ' && return 0 ;; esac
    done
    IFS=' '
    return 1
}
read -r want_sysv want_systemd || true
if [ -d /run/systemd/system ]; then init=systemd want=$want_systemd; else init=sysv want=$want_sysv; fi
files= pids= args=$#
while [ -n "$want" ] && [ "$#" -ge 2 ] && [ "$1" != -- ]; do
    k=$1 v=$2
    shift 2
    case $k in
    f | f:"$init") files="$files $v" ;;
    f:sysv | f:systemd) ;;
    s)
        n=${v%%=*} pf=${v#*=} pid= names=
        case $pf in *=*) names=${pf#*=} pf=${pf%%=*} ;; esac
        if [ "$init" = systemd ]; then
            systemctl is-active --quiet "$n" >/dev/null 2>&1 || want=
        elif [ -n "$pf" ] && [ -r "$pf" ] && read -r pid _ <"$pf" &&
            case $pid in '' | 0* | *[!0-9]*) false ;; esac && kill -0 "$pid" 2>/dev/null; then
            if named "$pid" "$names"; then pids="$pids $n=$pid"; else want=; fi
        else
            service "$n" status >/dev/null 2>&1 </dev/null || want=
        fi
        ;;
    b)
        etc=${v%=*} n=${v##*=} ok=
        set +f
        if [ "$init" = systemd ]; then
            for g in "$etc"/systemd/system/*.wants/"$n".service; do [ -L "$g" ] && ok=1; done
            if [ -L "$etc/systemd/system/$n.service" ] || [ -L "/run/systemd/system/$n.service" ]; then ok=; fi
        else
            for g in "$etc"/rc2.d/S[0-9][0-9]"$n"; do [ -e "$g" ] || [ -L "$g" ] && ok=1; done
        fi
        set -f
        [ -n "$ok" ] || want=
        ;;
    k)
        set +f
        ok=
        for g in "/var/lib/dpkg/info/$v.list" "/var/lib/dpkg/info/$v":*.list; do
            [ -e "$g" ] && ok=1
        done
        set -f
        [ -n "$ok" ] || want=
        ;;
    u)
        # /etc/passwd with builtins first; getent (a process) only for other NSS sources.
        found=
        while IFS=: read -r name _; do
            if [ "$name" = "$v" ]; then found=1; break; fi
        done </etc/passwd
        [ -n "$found" ] || getent passwd "$v" >/dev/null 2>&1 </dev/null || want=
        ;;
    r)
        # Where ROOT/current leads, by `cd -P` (a builtin; $PWD is then the physical
        # path): its last component must be the release id.
        here=$PWD t=
        if [ -L "${v%=*}/current" ] && cd -P -- "${v%=*}/current" 2>/dev/null; then
            t=$PWD
            cd -- "$here" 2>/dev/null || cd /
        fi
        [ -n "$t" ] && [ "${t##*/}" = "${v##*=}" ] || want=
        ;;
    *) want= ;;
    esac
done
if [ -n "$want" ] && [ -n "$files" ] && [ "$1" = -- ]; then
    got=$({
        echo "init $init"
        stat -c '%F %a %U:%G %n' -- $files
        sha256sum -- $files
    } 2>/dev/null </dev/null | sha256sum)
    if [ "${got%% *}" = "$want" ]; then
        host=
        read -r host </proc/sys/kernel/hostname 2>/dev/null || true
        echo "foobar-in-sync $init $host$pids"
        exit 0
    fi
fi
agent "$@"
"#;

/// One file as the script must find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// The service unit it belongs to (as in the manifest).
    pub service: String,
    pub init: Option<Init>,
}

/// What a host in sync shows, as the script checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub files: Vec<WitnessFile>,
    /// Where the agent keeps the manifest ([`MANIFEST`]; elsewhere in tests).
    pub manifest_path: String,
    /// (service unit, its pid file if the agent knows one)
    pub services: Vec<(String, Option<String>)>,
    /// Where rc2.d and systemd/system are (`/etc`; elsewhere in tests): every service
    /// must start at boot.
    pub etc: String,
    pub packages: Vec<String>,
    pub users: Vec<String>,
    /// (release root, release id)
    pub release: Option<(String, String)>,
}

/// What the script reported of a host it found in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InSync {
    pub init: Init,
    pub hostname: String,
    /// Pids read from the services' pid files.
    pub pids: Vec<(String, u64)>,
}

/// Plain characters only: nothing the script's word splitting, the `=` separators or
/// JSON escaping could change.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./@+-".contains(&b))
}

fn plain_path(p: &str) -> bool {
    p.starts_with('/') && plain(p) && !p.split('/').any(|c| c == "..")
}

const INITS: [Init; 2] = [Init::Sysv, Init::Systemd];

fn init_name(init: Init) -> &'static str {
    match init {
        Init::Sysv => "sysv",
        Init::Systemd => "systemd",
    }
}

impl Witness {
    /// The witness of a host's plan, or None when the script cannot vouch for all of
    /// its observed state (database, load balancer, certificates, unusual names).
    pub fn for_host(hp: &HostPlan, secrets: &Secrets) -> Result<Option<Witness>> {
        Witness::for_host_in(hp, secrets, crate::services::SERVICES)
    }

    /// [`Witness::for_host`] with the services' pid files from `table` (the service
    /// table, src/services.rs; tests change it).
    fn for_host_in(
        hp: &HostPlan,
        secrets: &Secrets,
        table: &[crate::services::ServiceSpec],
    ) -> Result<Option<Witness>> {
        if hp.db.is_some()
            || hp.host.has(Role::Lb)
            || hp.files.is_empty()
            || hp.files.iter().any(|f| f.path.ends_with(".pem"))
        {
            return Ok(None);
        }
        let mut files = Vec::new();
        for f in &hp.files {
            let resolved = secrets.resolve(&f.content)?;
            files.push(WitnessFile {
                path: f.path.clone(),
                sha256: sha256_hex(resolved.as_bytes()),
                size: resolved.len() as u64,
                mode: f.mode,
                owner: f.owner.clone(),
                group: f.group.clone(),
                service: f.service.unit().to_string(),
                init: f.init,
            });
        }
        let services = hp
            .services
            .iter()
            .map(|s| {
                let pidfile = table
                    .iter()
                    .find(|row| row.service == *s)
                    .and_then(|row| row.pid_file)
                    .map(str::to_string);
                (s.unit().to_string(), pidfile)
            })
            .collect();
        let w = Witness {
            files,
            manifest_path: MANIFEST.to_string(),
            services,
            etc: "/etc".to_string(),
            packages: hp.packages().iter().map(|p| p.to_string()).collect(),
            users: hp.users.clone(),
            release: hp.release.as_ref().map(|r| (r.root.clone(), r.id.clone())),
        };
        Ok(w.is_plain().then_some(w))
    }

    fn is_plain(&self) -> bool {
        self.files.iter().all(|f| {
            plain_path(&f.path)
                && plain(&f.owner)
                && plain(&f.group)
                && plain(&f.service)
                && f.mode <= 0o7777
        }) && plain_path(&self.manifest_path)
            && plain_path(&self.etc)
            && self
                .services
                .iter()
                .all(|(n, p)| plain(n) && p.as_deref().is_none_or(plain_path))
            && self.packages.iter().all(|p| plain(p))
            && self.users.iter().all(|u| plain(u))
            && self
                .release
                .as_ref()
                .is_none_or(|(root, id)| plain_path(root) && plain(id))
    }

    fn files_for(&self, init: Init) -> impl Iterator<Item = &WitnessFile> {
        self.files
            .iter()
            .filter(move |f| f.init.is_none_or(|i| i == init))
    }

    /// The manifest entries `commit` records for this plan (as diff_host builds them).
    pub fn manifest(&self, init: Init) -> Vec<ManifestEntry> {
        self.files_for(init)
            .map(|f| ManifestEntry {
                path: f.path.clone(),
                sha256: Some(f.sha256.clone()),
                mode: format!("{:04o}", f.mode),
                owner: f.owner.clone(),
                group: f.group.clone(),
                service: f.service.clone(),
            })
            .collect()
    }

    /// The manifest file as the agent writes it (the agent's files.py: json_lines, keys sorted,
    /// then a newline), byte for byte.
    pub fn manifest_bytes(&self, init: Init) -> String {
        let lines: Vec<String> = self
            .manifest(init)
            .iter()
            .map(|e| {
                format!(
                    "{{\"group\": \"{}\", \"mode\": \"{}\", \"owner\": \"{}\", \"path\": \"{}\", \"service\": \"{}\", \"sha256\": \"{}\"}}",
                    e.group,
                    e.mode,
                    e.owner,
                    e.path,
                    e.service,
                    e.sha256.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if lines.is_empty() {
            "[]\n".to_string()
        } else {
            format!("[\n{}\n]\n", lines.join(",\n"))
        }
    }

    /// What the script hashes on a host in sync with this init system.
    pub fn expected_text(&self, init: Init) -> String {
        let manifest = self.manifest_bytes(init);
        let manifest_sha = sha256_hex(manifest.as_bytes());
        let mut rows: Vec<(&str, String, u32, &str, &str, &str)> = self
            .files_for(init)
            .map(|f| {
                (
                    f.path.as_str(),
                    f.sha256.clone(),
                    f.mode,
                    f.owner.as_str(),
                    f.group.as_str(),
                    if f.size == 0 {
                        "regular empty file"
                    } else {
                        "regular file"
                    },
                )
            })
            .collect();
        rows.push((
            &self.manifest_path,
            manifest_sha,
            0o600,
            "root",
            "root",
            "regular file",
        ));
        let mut text = format!("init {}\n", init_name(init));
        for (path, _, mode, owner, group, kind) in &rows {
            text.push_str(&format!("{kind} {mode:o} {owner}:{group} {path}\n"));
        }
        for (path, sha, ..) in &rows {
            text.push_str(&format!("{sha}  {path}\n"));
        }
        text
    }

    /// The script's arguments after `sh -c SCRIPT`: its name and the items, then `--`
    /// (the agent's argv follows).
    pub fn args(&self) -> Vec<String> {
        let mut v = vec!["foobar-witness".to_string()];
        let mut item = |k: &str, val: String| {
            v.push(k.to_string());
            v.push(val);
        };
        for f in &self.files {
            let kind = match f.init {
                None => "f",
                Some(Init::Sysv) => "f:sysv",
                Some(Init::Systemd) => "f:systemd",
            };
            item(kind, f.path.clone());
        }
        item("f", self.manifest_path.clone());
        for (name, pidfile) in &self.services {
            let mut v = format!("{name}={}", pidfile.as_deref().unwrap_or(""));
            let names = crate::run::preflight::process_names_of_unit(name);
            if !names.is_empty() {
                v = format!("{v}={}", names.join(","));
            }
            item("s", v);
        }
        for (name, _) in &self.services {
            item("b", format!("{}={name}", self.etc));
        }
        for p in &self.packages {
            item("k", p.clone());
        }
        for u in &self.users {
            item("u", u.clone());
        }
        if let Some((root, id)) = &self.release {
            item("r", format!("{root}={id}"));
        }
        v.push("--".to_string());
        v
    }

    /// The check for the transport: `sh -c SCRIPT ARGS...` and its first line of stdin.
    pub fn check(&self) -> Check {
        let mut argv = vec!["sh".to_string(), "-c".to_string(), SCRIPT.to_string()];
        argv.extend(self.args());
        let digests: Vec<String> = INITS
            .iter()
            .map(|&i| sha256_hex(self.expected_text(i).as_bytes()))
            .collect();
        Check {
            argv,
            first_line: format!("{}\n", digests.join(" ")).into_bytes(),
            passed: format!("{IN_SYNC} ").into_bytes(),
        }
    }

    /// The host's state as observe would report it, for a host the script found in sync.
    pub fn state(&self, seen: &InSync) -> HostState {
        let files = self
            .files_for(seen.init)
            .map(|f| {
                (
                    f.path.clone(),
                    FileState {
                        exists: true,
                        sha256: Some(f.sha256.clone()),
                        mode: Some(format!("{:04o}", f.mode)),
                        owner: Some(f.owner.clone()),
                        group: Some(f.group.clone()),
                        size: Some(f.size),
                        link: None,
                        content_b64: None,
                    },
                )
            })
            .collect();
        let services = self
            .services
            .iter()
            .map(|(n, _)| {
                let pid = seen.pids.iter().find(|(s, _)| s == n).map(|(_, p)| *p);
                let state = ServiceState {
                    running: true,
                    pid,
                    enabled: Some(true), // the script found its links
                };
                (n.clone(), state)
            })
            .collect();
        HostState {
            init: init_name(seen.init).to_string(),
            hostname: seen.hostname.clone(),
            files,
            services,
            packages: self.packages.iter().map(|p| (p.clone(), true)).collect(),
            lock: None,
            manifest: self.manifest(seen.init),
            last_history: None,
            db: None,
            former_replica: None,
            release: self.release.as_ref().map(|(_, id)| ReleaseState {
                current: Some(id.clone()),
                releases: vec![id.clone()],
            }),
            users: self.users.iter().map(|u| (u.clone(), true)).collect(),
            haproxy: None,
            certs: Default::default(),
            // Its services run (checked by name, see SCRIPT): each holds its port.
            listeners: Vec::new(),
            // Only a removal reads them, and a vouched host has nothing to remove.
            originals: Vec::new(),
        }
    }
}

/// The script's answer line, when it says the host is in sync.
pub fn parse_in_sync(line: &[u8]) -> Option<InSync> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let mut words = text.split(' ');
    if words.next()? != IN_SYNC {
        return None;
    }
    let init = match words.next()? {
        "sysv" => Init::Sysv,
        "systemd" => Init::Systemd,
        _ => return None,
    };
    let hostname = words.next()?.to_string();
    let pids = words
        .filter_map(|w| {
            let (n, p) = w.split_once('=')?;
            Some((n.to_string(), p.parse().ok()?))
        })
        .collect();
    Some(InSync {
        init,
        hostname,
        pids,
    })
}

#[cfg(test)]
pub(crate) mod tests;
