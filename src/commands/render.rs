//! `foobar-infra render`: write each host's files under OUT/HOST/<install path>.

use anyhow::{Context, Result};

use super::{load_and_render, Outcome};
use crate::cli::RenderArgs;
use crate::output::Printer;

pub fn run(args: &RenderArgs, p: &Printer) -> Result<Outcome> {
    let (_inv, plan) = load_and_render(&args.inventory, args.templates.templates.as_deref())?;
    let mut written = Vec::new();
    for host in &plan.hosts {
        for f in &host.files {
            let dest = args
                .out
                .join(host.name())
                .join(f.path.trim_start_matches('/'));
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&dest, &f.content)
                .with_context(|| format!("writing {}", dest.display()))?;
            p.detail("Wrote", dest.display().to_string());
            written.push(serde_json::json!({"host": host.name(), "path": f.path, "file": dest}));
        }
    }
    if p.json {
        p.json_line(&serde_json::json!({"schema": 1, "command": "render", "files": written}));
    } else {
        p.status(
            "Rendered",
            format!(
                "{} files for {} hosts into {}",
                written.len(),
                plan.hosts.len(),
                args.out.display()
            ),
        );
    }
    Ok(Outcome::Success)
}
