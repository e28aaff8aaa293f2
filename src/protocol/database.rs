//! The database operations (src/agent/foobar_agent/db.py, db_restore.py): converging the primary, seeding,
//! starting, repairing and removing replicas, a promotion's fence, catch-up and
//! promote, and the four steps of `db restore`. Every SQL statement runs on the host,
//! from these fields; passwords travel here (on the agent's stdin), never in argv.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::shape::Shape;
use super::Operation;
use crate::plan::DbRole;
use crate::remote::agent::{DbState, ReplicaState};

/// A password sent to the agent: Debug prints `***`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Shape for Password {
    fn shape() -> Value {
        json!("str")
    }
}

impl Shape for DbRole {
    fn shape() -> Value {
        json!("str")
    }
}

wire! {
    /// A host's database as the tool plans it (src/database.rs `spec`): what observe
    /// reads and what `db-primary` converges to.
    pub struct DbSpec {
        /// `primary` or `replica`.
        pub role: DbRole,
        /// The application's database.
        pub database: String,
        /// Its accounts, with password hashes (never clear passwords).
        pub users: Vec<DbUser>,
        /// SQL that creates the schema's tables (run when some are missing).
        pub schema: Option<String>,
        /// The tables the schema creates.
        pub tables: Vec<String>,
        /// A replica's login to its primary: whether its password is current.
        pub replication: Option<ReplicationLogin>,
    }
}

wire! {
    /// An account: `user`@`host`, its password hash and grants.
    pub struct DbUser {
        pub user: String,
        pub host: String,
        /// e.g. `SELECT, INSERT ON `foobar`.*`.
        pub grants: Vec<String>,
        /// mysql_native_password hash (`*` and 40 hex digits).
        pub hash: String,
    }
}

wire! {
    pub struct ReplicationLogin {
        pub user: String,
        pub hash: String,
    }
}

wire! {
    /// A replica's source: the primary's address and the login it replicates with.
    pub struct PrimarySource {
        pub host: String,
        pub port: u16,
        pub user: String,
        pub password: Password,
    }
}

wire! {
    /// `db-primary`: converges the primary (database, schema tables, accounts and
    /// grants), writing only what differs.
    pub struct DbPrimary {
        pub db: DbSpec,
    }
}

impl Operation for DbPrimary {
    const OP: &'static str = "db-primary";
    type Answer = PrimaryConverged;
}

answer! {
    pub struct PrimaryConverged {
        /// The statements run (password hashes masked).
        pub done: Vec<String>,
        /// The database's state afterwards.
        pub state: DbState,
        /// `@@gtid_binlog_pos` afterwards.
        pub gtid: String,
    }
}

wire! {
    /// `db-seed-prepare`: stops and forgets replication, clears the binary log, drops
    /// the application database and creates the accounts unlogged.
    pub struct DbSeedPrepare {
        pub db: DbSpec,
    }
}

impl Operation for DbSeedPrepare {
    const OP: &'static str = "db-seed-prepare";
    type Answer = Done;
}

answer! {
    /// An answer with nothing more than `ok`.
    pub struct Done {}
}

wire! {
    /// `db-replica-start`: points the replica at its primary by GTID (current_pos),
    /// starts it, and waits up to `timeout_s` until both threads run.
    pub struct DbReplicaStart {
        pub primary: PrimarySource,
        pub timeout_s: u64,
    }
}

impl Operation for DbReplicaStart {
    const OP: &'static str = "db-replica-start";
    type Answer = Replicating;
}

answer! {
    /// SHOW SLAVE STATUS once replication runs (or, for `db-replica-remove`, after).
    pub struct Replicating {
        pub replica: Option<ReplicaState>,
    }
}

wire! {
    /// `db-replica-password`: the replica logs in with a new replication password
    /// (the GTID position is kept), then waits as `db-wait-replica`.
    pub struct DbReplicaPassword {
        pub password: Password,
        pub timeout_s: u64,
    }
}

impl Operation for DbReplicaPassword {
    const OP: &'static str = "db-replica-password";
    type Answer = Replicating;
}

wire! {
    /// `db-replica-remove`: replication stopped and forgotten (the data stays).
    pub struct DbReplicaRemove {}
}

impl Operation for DbReplicaRemove {
    const OP: &'static str = "db-replica-remove";
    type Answer = Replicating;
}

wire! {
    /// `db-wait-replica`: waits up to `timeout_s` until replication runs.
    pub struct DbWaitReplica {
        pub timeout_s: u64,
    }
}

impl Operation for DbWaitReplica {
    const OP: &'static str = "db-wait-replica";
    type Answer = Replicating;
}

wire! {
    /// `db-replica-repair`: each repair runs only while the state read just before
    /// still asks for it (src/database/replica.rs decides which).
    #[derive(Default)]
    pub struct DbReplicaRepair {
        /// Set `read_only` back ON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub read_only: Option<bool>,
        /// Start the IO thread, if it still stopped with this error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub start_io: Option<ThreadStop>,
        /// Start the SQL thread, if it still stopped with this error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub start_sql: Option<ThreadStop>,
        /// Re-point the replica at this source by GTID.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<PrimarySource>,
        pub timeout_s: u64,
    }
}

impl Operation for DbReplicaRepair {
    const OP: &'static str = "db-replica-repair";
    type Answer = Repaired;
}

wire! {
    /// The error a replication thread stopped with when observed.
    pub struct ThreadStop {
        pub errno: u32,
    }
}

answer! {
    pub struct Repaired {
        /// What was done.
        pub done: Vec<String>,
        /// SHOW SLAVE STATUS afterwards.
        pub replica: Option<ReplicaState>,
        pub read_only: bool,
    }
}

wire! {
    /// `db-fence`: the old primary becomes read-only.
    pub struct DbFence {}
}

impl Operation for DbFence {
    const OP: &'static str = "db-fence";
    type Answer = Fenced;
}

answer! {
    pub struct Fenced {
        /// Its binary log position, for the new primary to catch up to.
        pub gtid_binlog_pos: String,
    }
}

wire! {
    /// `db-catch-up`: waits up to `timeout_s` until the replica has applied `gtid`.
    pub struct DbCatchUp {
        pub gtid: String,
        pub timeout_s: u64,
    }
}

impl Operation for DbCatchUp {
    const OP: &'static str = "db-catch-up";
    type Answer = Done;
}

wire! {
    /// `db-promote`: replication stopped and forgotten, `read_only` OFF.
    pub struct DbPromote {}
}

impl Operation for DbPromote {
    const OP: &'static str = "db-promote";
    type Answer = Promoted;
}

answer! {
    pub struct Promoted {
        pub read_only: bool,
        pub gtid_current_pos: String,
    }
}

wire! {
    /// `db-restore-check`: read-only facts before a restore.
    pub struct DbRestoreCheck {
        pub database: String,
    }
}

impl Operation for DbRestoreCheck {
    const OP: &'static str = "db-restore-check";
    type Answer = RestoreFacts;
}

answer! {
    pub struct RestoreFacts {
        /// `SELECT VERSION()`.
        pub version: String,
        pub read_only: bool,
        pub log_bin: bool,
        pub gtid_binlog_pos: String,
        /// Whether the database exists.
        pub exists: bool,
        pub tables: Vec<String>,
        /// What RENAME TABLE cannot move (`view v`, `trigger t`, ...).
        pub unmovable: Vec<String>,
        /// Databases an earlier restore left behind.
        pub leftovers: Vec<String>,
    }
}

wire! {
    /// `db-restore-prepare`: creates the (new) scratch database.
    pub struct DbRestorePrepare {
        pub database: String,
        pub scratch: String,
        pub old: String,
    }
}

impl Operation for DbRestorePrepare {
    const OP: &'static str = "db-restore-prepare";
    type Answer = Done;
}

wire! {
    /// `db-restore-swap`: checks the scratch database holds exactly `tables`, then one
    /// RENAME TABLE switches; the side databases are dropped.
    pub struct DbRestoreSwap {
        pub database: String,
        pub scratch: String,
        pub old: String,
        /// The dump's tables.
        pub tables: Vec<String>,
        /// `lock_wait_timeout` of the RENAME.
        pub lock_wait_s: u64,
    }
}

impl Operation for DbRestoreSwap {
    const OP: &'static str = "db-restore-swap";
    type Answer = Swapped;
}

answer! {
    pub struct Swapped {
        /// Rows per restored table (None: unreadable).
        pub rows: BTreeMap<String, Option<u64>>,
        pub gtid_binlog_pos: String,
    }
}

wire! {
    /// `db-restore-abort`: drops the scratch database (the live one was not touched).
    pub struct DbRestoreAbort {
        pub database: String,
        pub scratch: String,
        pub old: String,
    }
}

impl Operation for DbRestoreAbort {
    const OP: &'static str = "db-restore-abort";
    type Answer = Done;
}
