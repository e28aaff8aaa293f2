//! `foobar-infra diff`: what apply would change, as unified diffs; changes nothing.

use std::sync::Arc;

use anyhow::Result;

use super::{remote, runtime, Outcome};
use crate::cli::RemoteArgs;
use crate::output::Printer;
use crate::run::observe::Observe;

pub fn run(args: &RemoteArgs, p: &Arc<Printer>) -> Result<Outcome> {
    if crate::planfile::is_plan(&args.inventory) {
        return super::plan::show(&args.inventory, p);
    }
    runtime()?.block_on(async {
        let session = remote::open(args, p, Observe::Witnessed, remote::Confirm::Shown).await?;
        if let Err(e) = remote::refuse_blocked(&session, p, "diff") {
            session.close().await;
            return Err(e);
        }
        let pending = remote::print_changes(&session.changes, p, "diff");
        session.close().await;
        Ok(if pending {
            Outcome::ChangesPending
        } else {
            Outcome::Success
        })
    })
}
