//! foobar-infra: provision the www.foobar.com stack over SSH.
//!
//! The pipeline is inventory -> render -> plan -> observe -> diff -> apply; see
//! docs/DESIGN.md. Rendering and diffing are pure; I/O is at the edges.

pub mod address_book;
pub mod boot;
pub mod certificate;
pub mod cli;
pub mod commands;
pub mod database;
pub mod diff;
pub mod error;
pub mod inventory;
pub mod keyed_hash;
pub mod manpage;
pub mod output;
pub mod plan;
pub mod planfile;
pub mod private_file;
pub mod protocol;
pub mod release;
pub mod remote;
pub mod render;
pub mod run;
pub mod safe_text;
pub mod secrets;
pub mod services;
pub mod templates;
pub mod validate;
pub mod witness;

use anyhow::Result;

use cli::{Cli, Command};
use commands::Outcome;
use output::Printer;

/// Runs one parsed command line.
pub fn run(cli: &Cli, p: &std::sync::Arc<Printer>) -> Result<Outcome> {
    match &cli.command {
        Command::Render(a) => commands::render::run(a, p),
        Command::Check(a) => commands::check::run(a, p),
        Command::Diff(a) => commands::diff::run(a, p),
        Command::Apply(a) => commands::apply::run(a, p),
        Command::Plan(a) => commands::plan::run(a, p),
        Command::Status(a) => commands::status::run(a, p),
        Command::Rollback(a) => commands::rollback::run(a, p),
        Command::History(a) => commands::history::run(a, p),
        Command::Completions(a) => commands::shell::completions(a),
        Command::Man => commands::shell::man(),
        Command::Db(cli::DbCommand::Backup(a)) => commands::db::backup(a, p),
        Command::Db(cli::DbCommand::Restore(a)) => commands::db::restore(a, p),
        Command::Db(cli::DbCommand::Promote(a)) => commands::promote::run(a, p),
        Command::Db(cli::DbCommand::Reseed(a)) => commands::reseed::run(a, p),
    }
}

/// The process exit code for a result (documented in `--help` and README).
pub fn exit_code(r: &Result<Outcome>) -> i32 {
    match r {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::ChangesPending) => 2,
        Err(e) => error::kind_of(e).0.exit_code(),
    }
}
