//! `foobar-infra check`: validate the inventory, render, and check every rendered file
//! with the service's own validator when it is installed here.

use anyhow::{bail, Result};

use super::{load_tested_and_render, Outcome};
use crate::cli::CheckArgs;
use crate::output::Printer;
use crate::validate::{validate_plan, Verdict};

pub fn run(args: &CheckArgs, p: &Printer) -> Result<Outcome> {
    let (inv, plan) = load_tested_and_render(&args.inventory, args.templates.templates.as_deref())?;
    p.status(
        "Checking",
        format!("{} hosts of {}", plan.hosts.len(), inv.path.display()),
    );
    let results = validate_plan(&plan)?;

    let mut invalid = 0;
    let mut unvalidated = 0;
    for r in &results {
        match &r.verdict {
            Verdict::Valid => {}
            Verdict::Invalid(_) => invalid += 1,
            Verdict::NotValidated(_) => unvalidated += 1,
        }
    }
    let failed = invalid > 0 || (args.strict && unvalidated > 0);

    if p.json {
        let files: Vec<_> = results
            .iter()
            .map(|r| {
                let (status, detail) = match &r.verdict {
                    Verdict::Valid => ("valid", None),
                    Verdict::Invalid(o) => ("invalid", Some(o.clone())),
                    Verdict::NotValidated(why) => ("not-validated", Some(why.clone())),
                };
                serde_json::json!({
                    "host": r.host, "path": r.path, "template": r.template,
                    "validator": r.validator, "status": status, "detail": detail,
                })
            })
            .collect();
        p.json_line(&serde_json::json!({
            "schema": 1, "command": "check", "ok": !failed,
            "inventory": inv.path, "files": files,
        }));
    } else {
        for r in &results {
            let line = format!("{} {} ({})", r.host, r.path, r.template);
            match &r.verdict {
                Verdict::Valid => p.status("Valid", format!("{line} [{}]", r.validator)),
                Verdict::NotValidated(why) => p.warn(format!("{line}: not validated ({why})")),
                Verdict::Invalid(out) => p.error(format!(
                    "{line}: {} rejects it:\n{}",
                    r.validator,
                    indent(out)
                )),
            }
        }
        p.status(
            "Checked",
            format!(
                "{} files: {} valid, {} invalid, {} not validated",
                results.len(),
                results.len() - invalid - unvalidated,
                invalid,
                unvalidated
            ),
        );
    }
    if invalid > 0 {
        bail!("{invalid} rendered file(s) failed validation");
    }
    if failed {
        bail!("{unvalidated} file(s) not validated and --strict was given");
    }
    Ok(Outcome::Success)
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
