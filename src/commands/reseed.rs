//! `foobar-infra db reseed HOST`: a replica that diverged from its primary is copied
//! from the primary again (src/database/reseed.rs). Every step is shown first;
//! `--dry-run` stops there.

use std::sync::Arc;

use anyhow::Result;

use super::remote::{limit, secret_names};
use super::{load_tested_and_render, runtime, Outcome};
use crate::cli::DbReseedArgs;
use crate::database::reseed;
use crate::output::Printer;
use crate::remote::Remote;
use crate::run::connect;
use crate::secrets::Secrets;

/// Hosts connected to at once (the primary, the replica, the load balancers).
const PARALLEL: usize = 8;

pub fn run(args: &DbReseedArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (inv, plan) = load_tested_and_render(&args.inventory, args.templates.templates.as_deref())?;
    let host = args.host.as_str();
    let steps = reseed::steps(&plan, host)?;
    for (i, s) in steps.iter().enumerate() {
        p.out(format!("{}. {s}", i + 1));
    }
    if args.dry_run {
        p.status("Dry run", "nothing changed");
        return Ok(Outcome::ChangesPending);
    }
    // Only the hosts it works on: the replica, its primary, the load balancers.
    let primary = plan.db_primary().map(|h| h.name().to_string());
    let names: Vec<String> = [Some(host.to_string()), primary, Some("lb".into())]
        .into_iter()
        .flatten()
        .collect();
    let plan = limit(plan, &names)?;
    let secrets = Secrets::load(&inv, &secret_names(&plan))?;
    runtime()?.block_on(async {
        let remotes = connect::connect_all(&plan, PARALLEL, None, p).await?;
        let refs: Vec<&dyn Remote> = remotes.iter().map(|r| r as &dyn Remote).collect();
        let result = reseed::run(&plan, host, &refs, &secrets, PARALLEL, p).await;
        connect::close_all(remotes).await;
        result
    })?;
    p.status("Reseeded", format!("{host}: replicating, read-only"));
    Ok(Outcome::Success)
}
