//! `foobar-infra completions SHELL` and `foobar-infra man`: generated from the same clap
//! definition as the parser, so they never drift from it.

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Outcome;
use crate::cli::{Cli, CompletionsArgs};

pub fn completions(args: &CompletionsArgs) -> Result<Outcome> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "foobar-infra", &mut std::io::stdout());
    Ok(Outcome::Success)
}

pub fn man() -> Result<Outcome> {
    crate::manpage::render(Cli::command(), &mut std::io::stdout().lock())
        .context("writing the man page")?;
    Ok(Outcome::Success)
}
