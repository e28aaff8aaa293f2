//! `foobar-infra diff`: what apply would change, as unified diffs.
use anyhow::Result;

use super::Outcome;
use crate::cli::RemoteArgs;
use crate::output::Printer;

pub fn run(_args: &RemoteArgs, _p: &Printer) -> Result<Outcome> {
    anyhow::bail!("diff: not built yet")
}
