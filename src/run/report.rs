//! What a run reports: per-host results (text and `--json` events) and the one
//! shape of a host's error ("HOST: what: cause").

use std::time::Duration;

use serde_json::json;

use crate::diff::HostChanges;
use crate::output::Printer;
use crate::plan::HostPlan;
use crate::remote::agent::AgentError;

/// "HOST: what: cause", with an agent's own output kept.
pub fn host_error(host: &str, what: &str, e: &anyhow::Error) -> String {
    match e.downcast_ref::<AgentError>() {
        Some(a) => format!("{host}: {what}: {}", a.describe()),
        None => {
            let msg = format!("{e:#}");
            if msg.starts_with(&format!("{host}:")) {
                msg
            } else {
                format!("{host}: {what}: {msg}")
            }
        }
    }
}

/// [`host_error`] as an error that keeps the cause's kind (src/error.rs) and names the
/// host.
pub fn host_failure(host: &str, what: &str, e: &anyhow::Error) -> anyhow::Error {
    let (kind, _) = crate::error::kind_of(e);
    crate::error::tag(anyhow::anyhow!(host_error(host, what, e)), kind, Some(host))
}

/// What happened on one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostReport {
    pub host: String,
    pub files_changed: usize,
    pub services: Vec<String>,
    pub seconds: f64,
    pub result: String,
}

/// Adds `what` (and its seconds) to the host's report, or starts one for it.
pub(super) fn note(reports: &mut Vec<HostReport>, host: &str, what: &str, seconds: f64) {
    match reports.iter_mut().find(|r| r.host == host) {
        Some(r) => {
            r.services.push(what.into());
            r.seconds += seconds;
        }
        None => reports.push(HostReport {
            host: host.into(),
            files_changed: 0,
            services: vec![what.into()],
            seconds,
            result: "applied".into(),
        }),
    }
}

pub(super) fn report(
    hp: &HostPlan,
    hc: &HostChanges,
    took: Duration,
    result: &str,
    printer: &Printer,
) -> HostReport {
    for f in &hc.files {
        printer.event(
            json!({"event": "file-changed", "host": hp.name(), "path": f.path, "change": f.kind}),
        );
    }
    for s in &hc.services {
        printer.event(json!({"event": "service-action", "host": hp.name(), "service": s.service, "action": s.action}));
    }
    let mut services: Vec<String> = hc
        .services
        .iter()
        .map(|s| format!("{} {}", s.service, s.action.as_str()))
        .collect();
    if hc.manifest_only() {
        services.push("manifest recorded".into());
    }
    for b in &hc.boot {
        printer.event(b.event(hp.name()));
        services.push(b.done());
    }
    printer.host_done(hp.name(), "applied");
    printer.status(
        "Applied",
        format!(
            "{}: {} files{}",
            hp.name(),
            hc.files.len(),
            if services.is_empty() {
                String::new()
            } else {
                format!(", {}", services.join(", "))
            }
        ),
    );
    HostReport {
        host: hp.name().to_string(),
        files_changed: hc.files.len(),
        services,
        seconds: took.as_secs_f64(),
        result: result.into(),
    }
}
