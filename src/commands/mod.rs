//! One file per subcommand; each reads as a short script of calls into the core.

pub mod apply;
pub mod check;
pub mod db;
pub mod diff;
pub mod history;
pub mod plan;
pub mod promote;
pub mod remote;
pub mod render;
pub mod reseed;
pub mod rollback;
pub mod shell;
pub mod status;

use anyhow::Result;

use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::templates::Templates;

/// What a successful command has to say to the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, or in sync.
    Success,
    /// diff / dry-run found changes.
    ChangesPending,
}

/// Loads the inventory and templates and renders the plan: the start of every command.
pub fn load_and_render(
    inventory: &std::path::Path,
    templates: Option<&std::path::Path>,
) -> Result<(Inventory, Plan)> {
    let inv = Inventory::load(inventory)?;
    let plan = render_plan(&inv, templates)?;
    Ok((inv, plan))
}

/// [`load_and_render`] for the commands that check a stack for, or make, changes on
/// hosts: a setting no lab can test end to end (`mysql.flavor: mysql8`) is refused
/// before anything is rendered. `render` alone keeps producing its files.
pub fn load_tested_and_render(
    inventory: &std::path::Path,
    templates: Option<&std::path::Path>,
) -> Result<(Inventory, Plan)> {
    let inv = Inventory::load(inventory)?;
    inv.refuse_untested()?;
    let plan = render_plan(&inv, templates)?;
    Ok((inv, plan))
}

/// The plan of a loaded inventory, with the templates (built-in, or those of the folder).
pub fn render_plan(inv: &Inventory, templates: Option<&std::path::Path>) -> Result<Plan> {
    let templates = Templates::load(templates)?;
    crate::render::render(inv, &templates)
}

/// The async runtime for commands that talk to hosts.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
