//! The `hosts:` section checked host by host (name, address, roles, SSH settings, server
//! id) and the roles across the stack (a load balancer, a web server, one primary).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::grammar::{self, is_name};
use super::validation::{resolve, RawHost, RawSsh, Validator};
use super::{Host, Role, SshSettings};

impl Validator {
    /// The hosts in file order, each with its SSH settings merged over the defaults.
    pub(super) fn hosts(
        &mut self,
        raw: &IndexMap<String, RawHost>,
        defaults: &RawSsh,
        dir: &Path,
    ) -> Vec<Host> {
        let mut hosts = Vec::new();
        let mut taken = TakenByHosts::default();
        if raw.is_empty() {
            self.err("hosts", "no hosts defined");
        }
        for (name, h) in raw {
            let hp = format!("hosts.{name}");
            self.check(is_name(name), &hp, || {
                format!("invalid host name {name:?} (lowercase letters, digits and '-')")
            });
            let (address, address_taken) = self.host_address(&hp, name, h, &mut taken);
            self.check_host_roles(&hp, &h.roles);
            let ssh = ssh_settings(defaults, &h.ssh, dir);
            self.check_host_ssh(&hp, h, &ssh);
            let server_id = h.server_id.unwrap_or_else(|| derived_server_id(address));
            if !address_taken {
                self.check_server_id(&hp, name, h, server_id, &mut taken);
            }
            hosts.push(Host {
                name: name.clone(),
                address,
                roles: h.roles.clone(),
                ssh,
                server_id,
            });
        }
        hosts
    }

    /// The host's address, and whether it is invalid or already another host's (checks
    /// that derive from the address are then skipped).
    fn host_address(
        &mut self,
        hp: &str,
        name: &str,
        h: &RawHost,
        taken: &mut TakenByHosts,
    ) -> (IpAddr, bool) {
        let address: IpAddr = match h.address.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    &format!("{hp}.address"),
                    format!("invalid IP address {:?}", h.address),
                );
                return (IpAddr::from([0, 0, 0, 0]), true);
            }
        };
        if let Some(other) = taken.addresses.insert(address, name.to_string()) {
            self.err(
                &format!("{hp}.address"),
                format!("duplicate address {address} (already used by {other})"),
            );
            return (address, true);
        }
        (address, false)
    }

    fn check_host_roles(&mut self, hp: &str, roles: &[Role]) {
        if roles.is_empty() {
            self.err(&format!("{hp}.roles"), "a host needs at least one role");
        }
        let mut seen = Vec::new();
        for (i, r) in roles.iter().enumerate() {
            if seen.contains(r) {
                self.err(
                    &format!("{hp}.roles[{i}]"),
                    format!("role {r} listed twice"),
                );
            }
            seen.push(*r);
        }
        if roles.contains(&Role::DbPrimary) && roles.contains(&Role::DbReplica) {
            self.err(
                &format!("{hp}.roles"),
                "a host cannot be both db-primary and db-replica",
            );
        }
    }

    fn check_host_ssh(&mut self, hp: &str, h: &RawHost, ssh: &SshSettings) {
        if ssh.port == 0 {
            let p = if h.ssh.port.is_some() {
                format!("{hp}.ssh.port")
            } else {
                "ssh.port".into()
            };
            self.err(&p, "port 0 is not a valid SSH port");
        }
        if !grammar::is_login_name(&ssh.user) {
            self.err(
                &format!("{hp}.ssh.user"),
                format!(
                    "invalid SSH user {:?} (letters, digits, '_', '.', '-')",
                    ssh.user
                ),
            );
        }
    }

    /// A server id is not 0, and unique among the database hosts.
    fn check_server_id(
        &mut self,
        hp: &str,
        name: &str,
        h: &RawHost,
        server_id: u32,
        taken: &mut TakenByHosts,
    ) {
        if server_id == 0 {
            self.err(
                &format!("{hp}.server_id"),
                "server_id must be between 1 and 4294967295",
            );
        }
        let is_db = h.roles.contains(&Role::DbPrimary) || h.roles.contains(&Role::DbReplica);
        if is_db {
            if let Some(other) = taken.server_ids.insert(server_id, name.to_string()) {
                self.err(
                    &format!("{hp}.server_id"),
                    format!("server_id {server_id} is also the server_id of {other}"),
                );
            }
        }
    }

    /// The roles across the stack: a load balancer, a web server, exactly one primary.
    pub(super) fn check_roles_across(&mut self, hosts: &[Host]) {
        if hosts.is_empty() {
            return;
        }
        let count = |r: Role| hosts.iter().filter(|h| h.roles.contains(&r)).count();
        if count(Role::Lb) == 0 {
            self.err(
                "hosts",
                "no host has the role lb (at least one load balancer is required)",
            );
        }
        if count(Role::Web) == 0 {
            self.err(
                "hosts",
                "no host has the role web (at least one web server is required)",
            );
        }
        let primaries: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::DbPrimary)).collect();
        let replicas: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::DbReplica)).collect();
        if primaries.len() > 1 {
            let names: Vec<&str> = primaries.iter().map(|h| h.name.as_str()).collect();
            self.err(
                &format!("hosts.{}.roles", primaries[1].name),
                format!(
                    "more than one db-primary ({}): exactly one host must have it",
                    names.join(", ")
                ),
            );
        } else if primaries.is_empty() && !replicas.is_empty() {
            self.err(
                &format!("hosts.{}.roles", replicas[0].name),
                "db-replica without a db-primary: no host has the role db-primary",
            );
        } else if primaries.is_empty() {
            self.err(
                "hosts",
                "no host has the role db-primary (exactly one is required)",
            );
        }
    }
}

/// What the hosts read so far use, to name a second user of the same value.
#[derive(Default)]
struct TakenByHosts {
    addresses: HashMap<IpAddr, String>,
    /// Among the database hosts only.
    server_ids: HashMap<u32, String>,
}

/// A host's SSH settings: its own (`own`) over the inventory's (`defaults`) over the
/// built-in ones (root, port 22, 10 s).
pub(super) fn ssh_settings(defaults: &RawSsh, own: &RawSsh, dir: &Path) -> SshSettings {
    let (d, o) = (defaults, own);
    let rel = |p: &PathBuf| resolve(dir, p);
    SshSettings {
        user: o
            .user
            .clone()
            .or(d.user.clone())
            .unwrap_or_else(|| "root".into()),
        port: o.port.or(d.port).unwrap_or(22),
        known_hosts: o.known_hosts.as_ref().or(d.known_hosts.as_ref()).map(rel),
        identity_file: o
            .identity_file
            .as_ref()
            .or(d.identity_file.as_ref())
            .map(rel),
        config_file: o.config_file.as_ref().or(d.config_file.as_ref()).map(rel),
        connect_timeout: o.connect_timeout.or(d.connect_timeout).unwrap_or(10),
        connector: o.connector.or(d.connector).unwrap_or_default(),
    }
}

/// A stable, unique server-id: the IPv4 address as a number (the low 32 bits for IPv6),
/// so adding a host never renumbers the others.
fn derived_server_id(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => (u128::from(a) & 0xffff_ffff) as u32,
    }
}
