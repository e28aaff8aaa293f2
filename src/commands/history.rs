//! `foobar-infra history`: the apply records each host keeps (who, when, which version,
//! inventory hash and git commit, files changed, result), newest last.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{json, Value};

use super::remote::limit;
use super::{load_and_render, runtime, Outcome};
use crate::cli::HistoryArgs;
use crate::output::Printer;
use crate::protocol::{self, release::History};
use crate::remote::ssh;
use crate::run::parallel::bounded;

pub fn run(args: &HistoryArgs, p: &Arc<Printer>) -> Result<Outcome> {
    let (_inv, plan) = load_and_render(
        &args.remote.inventory,
        args.remote.templates.templates.as_deref(),
    )?;
    let mut selection = args.remote.limit.clone();
    selection.extend(args.host.iter().cloned());
    let plan = limit(plan, &selection)?;
    let records: Vec<(String, Result<Vec<Value>>)> = runtime()?.block_on(async {
        bounded(plan.hosts.iter().collect(), args.remote.parallel, |hp| {
            let p = p.clone();
            async move {
                let res = async {
                    let r = ssh::connect(&hp.host, p).await?;
                    let request = History {
                        last: args.last as u64,
                    };
                    let answer = protocol::call(&r, &request).await;
                    let _ = r.close().await;
                    Ok(answer?.records)
                }
                .await;
                (hp.name().to_string(), res)
            }
        })
        .await
    });
    let mut failed = Vec::new();
    if p.json {
        let hosts: Vec<Value> = records
            .iter()
            .map(|(h, r)| match r {
                Ok(recs) => json!({"host": h, "records": recs}),
                Err(e) => json!({"host": h, "error": format!("{e:#}")}),
            })
            .collect();
        p.json_line(&json!({"schema": 1, "command": "history", "hosts": hosts}));
    } else {
        p.out(format!(
            "{:<10} {:<21} {:<12} {:<16} {:<8} {:<9} {}",
            "HOST", "TIME", "RESULT", "USER", "VERSION", "INV", "CHANGES"
        ));
    }
    for (host, r) in &records {
        match r {
            Ok(recs) if !p.json => {
                for rec in recs {
                    p.out(history_line(host, rec));
                }
            }
            Ok(_) => {}
            Err(e) => failed.push(format!("{host}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("\n"));
    }
    Ok(Outcome::Success)
}

/// One run of a host's history as a line of the table: time, result, user, version,
/// inventory hash and what changed (files, services, boot, earlier results, error).
fn history_line(host: &str, rec: &Value) -> String {
    let files = rec["files"].as_array().map(|f| f.len()).unwrap_or(0);
    let services: Vec<String> = rec["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {}",
                s["service"].as_str().unwrap_or("?"),
                s["action"].as_str().unwrap_or("?")
            )
        })
        .chain(rec["boot"].as_array().into_iter().flatten().map(|b| {
            format!(
                "{} {} at boot",
                b["service"].as_str().unwrap_or("?"),
                b["action"].as_str().unwrap_or("?")
            )
        }))
        .collect();
    let mut changes = format!("{files} files");
    if !services.is_empty() {
        changes.push_str(&format!(", {}", services.join(", ")));
    }
    if let Some(was) = rec["earlier"].as_array().filter(|e| !e.is_empty()) {
        let was: Vec<&str> = was.iter().filter_map(|w| w.as_str()).collect();
        changes.push_str(&format!(" (was {})", was.join(", then ")));
    }
    if let Some(err) = rec["error"].as_str() {
        changes.push_str(&format!(" - {}", err.lines().next().unwrap_or("")));
    }
    format!(
        "{:<10} {:<21} {:<12} {:<16} {:<8} {:<9} {}",
        host,
        rec["time"].as_str().unwrap_or("?"),
        rec["result"].as_str().unwrap_or("?"),
        rec["user"].as_str().unwrap_or("?"),
        rec["tool_version"].as_str().unwrap_or("?"),
        rec["inventory_hash"]
            .as_str()
            .map(|h| &h[..h.len().min(8)])
            .unwrap_or("-"),
        changes
    )
}
