//! `foobar-infra apply`.
use anyhow::Result;

use super::Outcome;
use crate::cli::ApplyArgs;
use crate::output::Printer;

pub fn run(_args: &ApplyArgs, _p: &Printer) -> Result<Outcome> {
    anyhow::bail!("apply: not built yet")
}
