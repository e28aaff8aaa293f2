//! `foobar-infra plan`: observe the hosts and save what apply would do (`--out`), for
//! review; `diff PLAN` prints it back without any server, `apply PLAN` applies it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{remote, runtime, Outcome};
use crate::cli::PlanArgs;
use crate::diff::Changes;
use crate::output::Printer;
use crate::planfile;
use crate::run::observe::Observe;

pub fn run(args: &PlanArgs, p: &Arc<Printer>) -> Result<Outcome> {
    runtime()?.block_on(async {
        let session = remote::open(&args.remote, p, Observe::Witnessed, remote::Confirm::Shown).await?;
        if let Err(e) = remote::refuse_blocked(&session, p, "plan") {
            session.close().await;
            return Err(e);
        }
        let templates = crate::templates::Templates::load(args.remote.templates.templates.as_deref());
        let file = templates.and_then(|t| {
            planfile::build(&session.inventory, &t.source_hash(), &session.plan, &session.observed, &session.changes)
        });
        let pending = !session.changes.is_empty();
        let printed = if p.json { false } else { remote::print_changes(&session.changes, p, "plan") };
        let _ = printed;
        session.close().await;
        let file = file?;
        let text = serde_json::to_string_pretty(&file).context("encoding the plan")?;
        std::fs::write(&args.out, text + "\n").with_context(|| format!("writing {}", args.out.display()))?;
        if p.json {
            p.json_line(&serde_json::json!({"schema": 1, "command": "plan", "out": args.out, "in_sync": !pending,
                "hosts": file.hosts.iter().map(|h| &h.changes).collect::<Vec<_>>()}));
        }
        p.status("Saved", format!("plan {} (apply it with: foobar-infra apply {})", args.out.display(), args.out.display()));
        Ok(if pending { Outcome::ChangesPending } else { Outcome::Success })
    })
}

/// `diff PLAN`: the reviewed changes, read back from the plan; no server is contacted.
pub fn show(path: &Path, p: &Printer) -> Result<Outcome> {
    let file = planfile::read(path)?;
    let hosts = file
        .hosts
        .iter()
        .filter(|h| !h.changes.is_null())
        .map(|h| {
            serde_json::from_value(h.changes.clone())
                .with_context(|| format!("{}: host {}", path.display(), h.host))
        })
        .collect::<Result<Vec<_>>>()?;
    let changes = Changes {
        topology: Default::default(),
        hosts,
        in_service: Vec::new(),
    };
    let pending = remote::print_changes(&changes, p, "diff");
    Ok(if pending {
        Outcome::ChangesPending
    } else {
        Outcome::Success
    })
}
