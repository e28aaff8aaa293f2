//! The command-line definition (clap derive): subcommands, options, help texts with
//! examples, and the exit codes they document.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success; for diff and apply --dry-run: everything is in sync
  1  error (bad inventory, invalid config, unreachable host, failed apply)
  2  changes pending (diff, apply --dry-run)
  64 usage error (unknown option, missing or invalid argument)";

/// The exit code of a usage error (sysexits' EX_USAGE), never 2: CI scripts read 2 as
/// "changes pending".
pub const EX_USAGE: i32 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "foobar-infra",
    version,
    about = "Provision the www.foobar.com stack (HAProxy, Nginx, application, MariaDB primary-replica) over SSH",
    long_about = "Provision the www.foobar.com stack over SSH.\n\n\
        Reads one inventory, renders the HAProxy, Nginx and MySQL/MariaDB configs from Tera \
        templates, and pushes them to the hosts, validating before anything is replaced and \
        reloading only what changed.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout (see README for the schemas)
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and results
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more: -v shows every remote command
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// When to use colors (NO_COLOR in the environment means never)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render every host's config files into a directory, without any server
    #[command(after_help = "Examples:
  foobar-infra render inventory/inventory.yaml --out out/
  foobar-infra render inventory/inventory.yaml --out out/ --templates my-templates/

Files land at their install paths under DIR/HOST/, e.g. out/lb-01/etc/haproxy/haproxy.cfg.
Secrets appear as {{secret:NAME}} placeholders; no secret value is needed.

Exit codes: 0 rendered, 1 error.")]
    Render(RenderArgs),

    /// Validate the inventory, render everything and check the configs with the real tools
    #[command(after_help = "Examples:
  foobar-infra check inventory/inventory.yaml
  foobar-infra check inventory/inventory.yaml --strict --json

Runs `haproxy -c`, `nginx -t` and the database server's option parsing on the rendered
files when those programs are installed here; otherwise the file is reported as not
validated (an error with --strict).

Exit codes: 0 all valid, 1 an error or an invalid config.")]
    Check(CheckArgs),

    /// Show what apply would change on the hosts (unified diffs), changing nothing
    #[command(after_help = "Examples:
  foobar-infra diff lab/inventory.yaml
  foobar-infra diff inventory/inventory.yaml --limit web --json

Exit codes: 0 in sync, 2 changes pending, 1 error.")]
    Diff(RemoteArgs),

    /// Observe the hosts and save what apply would do, for review (`apply PLAN` applies it)
    #[command(after_help = "Examples:
  foobar-infra plan inventory/inventory.yaml --out plan.json
  foobar-infra diff plan.json          # the reviewed diff, offline
  foobar-infra apply plan.json         # exactly that, or nothing

The plan holds the rendered files (secrets as placeholders), each host's file hashes when
the plan was made, and the diffs. `apply plan.json` refuses, naming host and file, when a
host changed since, when the inventory or templates changed, or when the plan is older
than --max-plan-age.

Exit codes: 0 saved and nothing to change, 2 saved with changes pending, 1 error.")]
    Plan(PlanArgs),

    /// Push the rendered configs to the hosts and reload only what changed
    #[command(after_help = "Examples:
  foobar-infra apply lab/inventory.yaml
  foobar-infra apply inventory/inventory.yaml --dry-run
  foobar-infra apply inventory/inventory.yaml --limit web-02

A run is all-or-nothing: every host stages and validates its new files first; only when
all succeed are files swapped in and services reloaded. A failed reload restores the old
files on every host touched in the run.

Exit codes: 0 applied (or nothing to do), 2 changes pending (--dry-run), 1 error.")]
    Apply(ApplyArgs),

    /// Show the health of every host: services, drift, release, replication, backends
    #[command(after_help = "Examples:
  foobar-infra status lab/inventory.yaml
  foobar-infra status inventory/inventory.yaml --json

Unhealthy: a host unreachable, a service not running, a replica not replicating (with
its last error), a web server not UP on a load balancer. Drift is shown, not counted.

Exit codes: 0 healthy, 1 a problem (listed) or an error.")]
    Status(RemoteArgs),

    /// Switch the web servers back to the previous application release, one at a time
    #[command(after_help = "Examples:
  foobar-infra rollback lab/inventory.yaml
  foobar-infra rollback lab/inventory.yaml --to 3e97125cf3f4

Each web server is drained from the load balancers, switched, checked and put back,
as in a deploy. The inventory still names the newer files: revert them before the next
apply, or it deploys them again.

Exit codes: 0 rolled back (or already there), 1 error.")]
    Rollback(RollbackArgs),

    /// List the apply records the hosts keep (time, user, version, files, result)
    #[command(after_help = "Examples:
  foobar-infra history lab/inventory.yaml
  foobar-infra history lab/inventory.yaml web-01 --last 5 --json

Every apply that touched a host appends a record there
(/var/lib/foobar-infra/history.jsonl): applied, failed (with the cause) or rolled-back.

Exit codes: 0, 1 error.")]
    History(HistoryArgs),

    /// Database operations: backup, restore, promote (failover), reseed (a diverged replica)
    #[command(subcommand)]
    Db(DbCommand),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Examples:
  foobar-infra completions bash > /etc/bash_completion.d/foobar-infra
  foobar-infra completions zsh > ~/.zfunc/_foobar-infra")]
    Completions(CompletionsArgs),

    /// Print the man page (roff) generated from this command line definition
    #[command(after_help = "Example:
  foobar-infra man > /usr/local/share/man/man1/foobar-infra.1")]
    Man,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Where to write the plan (JSON)
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Dump the primary (or --from a replica) into a local gzip file, streamed over SSH
    #[command(after_help = "Examples:
  foobar-infra db backup lab/inventory.yaml --out foobar.sql.gz
  foobar-infra db backup lab/inventory.yaml --out foobar.sql.gz --from web-02

A consistent dump (mariadb-dump --single-transaction --gtid) of the application's
database, streamed through the SSH connection and compressed here: nothing is written
on the host. FILE.json records the host, the GTID position, the size and a sha256.

Exit codes: 0 saved, 1 error.")]
    Backup(DbBackupArgs),
    /// Restore a verified backup into the primary, all or nothing (dry run without --yes)
    #[command(after_help = "Examples:
  foobar-infra db restore lab/inventory.yaml foobar.sql.gz          # what it would do
  foobar-infra db restore lab/inventory.yaml foobar.sql.gz --yes

The backup is checked before any host is touched: its record FILE.json (sha256 and size
of the SQL), the dump's `-- Dump completed` trailer, its GTID position, database and
server version (a dump from a newer MariaDB series is refused). With --yes: a safety
backup of the primary's data is saved beside FILE (path printed, kept), the backup loads
into a scratch database, and only a complete load replaces the application's tables, with
one RENAME TABLE that the replicas apply through replication. Any failure before that
leaves the primary and the replicas as they were.

Exit codes: 0 restored, 2 dry run (nothing changed), 1 error.")]
    Restore(DbRestoreArgs),
    /// Make a replica the primary (failover); --dry-run shows every step first
    #[command(after_help = "Examples:
  foobar-infra db promote lab/inventory.yaml web-02 --dry-run
  foobar-infra db promote lab/inventory.yaml web-02 --write-inventory
  foobar-infra apply lab/inventory.yaml

Fences the old primary read-only and waits for the replica to catch up when the old
primary answers; stops replication on the new primary and makes it writable; points the
other replicas (and the old primary) at it. The inventory change (roles swapped) is
printed, or written with --write-inventory keeping comments and order. The next apply
moves the application's writes to the new primary.

Exit codes: 0 promoted (and inventory written), 2 dry run, 1 error (also when the
inventory was not written: apply would refuse until it is).")]
    Promote(DbPromoteArgs),
    /// Copy the primary into a replica again (a diverged replica); --dry-run shows the steps
    #[command(after_help = "Examples:
  foobar-infra db reseed lab/inventory.yaml web-02 --dry-run
  foobar-infra db reseed lab/inventory.yaml web-02

For a replica that diverged from its primary (a write on the replica, then an error
replication cannot go past: GTID out of order, a duplicate key, a position the primary
does not have), which diff and apply name and refuse to change in place. The replica
is drained from the load balancers; its application database is replaced by a
consistent dump streamed from the primary (which, as in apply, only gets what it lacks:
database, tables, accounts), replication starts by GTID at the dump's position,
read_only goes back ON; then it is put back in the pool. Refused when the inventory's
primary is not the live, writable primary.

Exit codes: 0 re-seeded and replicating, 2 dry run, 1 error.")]
    Reseed(DbReseedArgs),
}

#[derive(Args, Debug)]
pub struct DbReseedArgs {
    /// The inventory file
    pub inventory: PathBuf,
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// The replica to copy the primary into
    pub host: String,
    /// Show the steps, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct DbPromoteArgs {
    /// The inventory file
    pub inventory: PathBuf,
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// The replica to promote
    pub host: String,
    /// Show the steps and the inventory change, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Write the inventory change (keeps comments and order)
    #[arg(long)]
    pub write_inventory: bool,
}

#[derive(Args, Debug)]
pub struct DbBackupArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The backup file to write (gzip)
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Dump this database host instead of the primary (e.g. a replica)
    #[arg(long, value_name = "HOST")]
    pub from: Option<String>,
}

#[derive(Args, Debug)]
pub struct DbRestoreArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The backup file (made by `db backup`)
    pub file: PathBuf,
    /// Restore for real (without it: print what would happen, exit 2)
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Only these hosts
    pub host: Vec<String>,
    /// How many records per host, newest last
    #[arg(long, default_value_t = 20)]
    pub last: usize,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The release id to go back to (default: the one before the current)
    #[arg(long, value_name = "RELEASE")]
    pub to: Option<String>,
}

#[derive(Args, Debug)]
pub struct TemplateArgs {
    /// Directory whose files replace built-in templates of the same name
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// The inventory file
    pub inventory: PathBuf,
    /// Output directory (created if missing)
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub templates: TemplateArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The inventory file
    pub inventory: PathBuf,
    /// Treat a validator that is not installed here as an error
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub templates: TemplateArgs,
}

#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// The inventory file (or, for diff and apply, a plan saved by `plan --out`)
    pub inventory: PathBuf,
    /// Only these hosts or roles (comma-separated or repeated): web-02, web, lb
    #[arg(long, value_name = "HOST|ROLE", value_delimiter = ',')]
    pub limit: Vec<String>,
    /// How many hosts to work on at once
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub parallel: usize,
    /// Keep the SSH connections, and the agent on each host, for SECONDS after the run
    /// and reuse them in the next run (as ssh's ControlPersist): e.g. `diff` then
    /// `apply` within a minute, with no new connection and no remote command
    #[arg(long, value_name = "SECONDS", env = "FOOBAR_SSH_PERSIST")]
    pub persist: Option<u64>,
    /// With a saved plan: refuse it when it is older than this
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub max_plan_age: u64,
    /// With a saved plan: the inventory it is applied with (default: the YAML file
    /// beside the plan whose hash the plan records; the path the plan names is never read)
    #[arg(long = "inventory", value_name = "INVENTORY")]
    pub plan_inventory: Option<PathBuf>,
    /// A host removed from the inventory entirely: drain it, remove every file the tool
    /// manages there and stop its services. Its address is ADDRESS, or the one this
    /// controller recorded at its last apply of this inventory, shown (and for apply
    /// confirmed: a prompt on a terminal, else --yes). Repeatable.
    #[arg(long, value_name = "NAME[=ADDRESS]", value_delimiter = ',')]
    pub prune_host: Vec<String>,
    #[command(flatten)]
    pub templates: TemplateArgs,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Show the diff of what would change and stop (exit 2 when something would)
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for another run's lock on a host to be freed. A lock is never
    /// taken over while its run lives; a dead run's lock is free at once
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub lock_timeout: u64,
    /// Take the addresses --prune-host finds in this controller's records without a
    /// prompt (needed where there is no terminal, unless given as NAME=ADDRESS)
    #[arg(long)]
    pub yes: bool,
    /// Change N web servers first (their files and new release) and judge them by live
    /// traffic at every load balancer before the others (the inventory's `rollout:` gives
    /// the window and limits; without it: 30s, 1% above the old release, halt on no
    /// traffic). Refused (exit 64) when N covers every web server the run changes
    #[arg(long, value_name = "N", conflicts_with = "no_canary")]
    pub canary: Option<usize>,
    /// No canary stage, whatever the inventory's `rollout:` says
    #[arg(long)]
    pub no_canary: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
