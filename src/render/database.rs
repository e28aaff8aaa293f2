//! What rendering computes for the database hosts: their template context, the
//! application's view of them, the accounts the stack needs and each host's [`DbPlan`].

use anyhow::{Context, Result};
use serde::Serialize;

use crate::inventory::{Flavor, Host, Inventory, Role};
use crate::plan::{DbPlan, DbRole, DbUser, PrimaryRef};

#[derive(Serialize)]
pub(super) struct DbCtx<'a> {
    flavor: &'static str,
    server_id: u32,
    bind_address: String,
    port: u16,
    primary: &'a str,
    log_bin: &'static str,
    relay_log: &'static str,
    innodb_buffer_pool_size: &'a str,
}

/// Where the application on a web server writes and reads.
#[derive(Serialize)]
pub(super) struct AppDbCtx<'a> {
    write_host: String,
    write_port: u16,
    read_host: String,
    read_port: u16,
    name: &'a str,
    user: &'a str,
}

pub(super) fn db_ctx<'a>(inv: &'a Inventory, host: &Host) -> DbCtx<'a> {
    DbCtx {
        flavor: match inv.mysql.flavor {
            Flavor::Mariadb => "mariadb",
            Flavor::Mysql8 => "mysql8",
        },
        server_id: host.server_id,
        bind_address: host.address.to_string(),
        port: inv.mysql.port,
        primary: inv.db_primary().map(|p| p.name.as_str()).unwrap_or(""),
        log_bin: "mysql-bin",
        relay_log: "relay-bin",
        innodb_buffer_pool_size: &inv.mysql.innodb_buffer_pool_size,
    }
}

/// Where a web server's application writes (the primary) and reads (its own database
/// when it has one, else the primary).
pub(super) fn app_db_ctx<'a>(inv: &'a Inventory, host: &Host) -> Option<AppDbCtx<'a>> {
    let primary = inv.db_primary()?;
    let read = if host.is_db() { host } else { primary };
    Some(AppDbCtx {
        write_host: primary.address.to_string(),
        write_port: inv.mysql.port,
        read_host: read.address.to_string(),
        read_port: inv.mysql.port,
        name: &inv.mysql.database,
        user: &inv.mysql.app_user,
    })
}

/// The accounts the stack needs: the application's from every web server (and the
/// database hosts themselves), replication's from every database host (so any can be
/// promoted later).
fn db_users(inv: &Inventory) -> Vec<DbUser> {
    let m = &inv.mysql;
    let mut users = Vec::new();
    let mut app_hosts: Vec<String> = inv
        .with_role(Role::Web)
        .map(|h| h.address.to_string())
        .collect();
    app_hosts.push("localhost".into());
    for h in app_hosts {
        users.push(DbUser {
            user: m.app_user.clone(),
            host: h,
            secret: "db_app_password".into(),
            grants: vec![format!(
                "SELECT, INSERT, UPDATE, DELETE ON `{}`.*",
                m.database
            )],
        });
    }
    if let Some(mon) = &inv.monitoring {
        // The MySQL exporter's account: status and replication state, no data.
        let privileges = match m.flavor {
            Flavor::Mariadb => "PROCESS, BINLOG MONITOR, SLAVE MONITOR ON *.*",
            Flavor::Mysql8 => "PROCESS, REPLICATION CLIENT ON *.*",
        };
        users.push(DbUser {
            user: mon.mysql_user.clone(),
            host: "localhost".into(),
            secret: crate::inventory::MONITOR_SECRET.into(),
            grants: vec![privileges.into()],
        });
    }
    for h in inv.hosts.iter().filter(|h| h.is_db()) {
        users.push(DbUser {
            user: m.replication_user.clone(),
            host: h.address.to_string(),
            secret: "db_replication_password".into(),
            grants: vec!["REPLICATION SLAVE ON *.*".into()],
        });
    }
    users
}

pub(super) fn db_plan(inv: &Inventory, host: &Host) -> Result<DbPlan> {
    let (schema, tables) = match &inv.app.source {
        Some(dir) => {
            let path = dir.join("schema.sql");
            match std::fs::read_to_string(&path) {
                Ok(sql) => {
                    let tables = schema_tables(&sql);
                    (Some(sql), tables)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        None => (None, Vec::new()),
    };
    let primary = if host.has(Role::DbReplica) {
        inv.db_primary().map(|p| PrimaryRef {
            name: p.name.clone(),
            address: p.address.to_string(),
            port: inv.mysql.port,
            user: inv.mysql.replication_user.clone(),
            secret: "db_replication_password".into(),
        })
    } else {
        None
    };
    Ok(DbPlan {
        role: if host.has(Role::DbPrimary) {
            DbRole::Primary
        } else {
            DbRole::Replica
        },
        database: inv.mysql.database.clone(),
        users: db_users(inv),
        primary,
        schema,
        tables,
    })
}

/// Table names of `CREATE TABLE [IF NOT EXISTS] name` statements.
fn schema_tables(sql: &str) -> Vec<String> {
    let mut tables = Vec::new();
    for line in sql.lines() {
        let l = line.trim();
        let upper = l.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("CREATE TABLE ") {
            let offset = l.len() - rest.len();
            let rest = rest
                .strip_prefix("IF NOT EXISTS ")
                .map(|r| &l[l.len() - r.len()..])
                .unwrap_or(&l[offset..]);
            let name: String = rest
                .trim_start_matches('`')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                tables.push(name);
            }
        }
    }
    tables
}
