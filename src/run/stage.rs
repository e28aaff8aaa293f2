//! The stage phase: every host's new files uploaded beside the live ones and checked
//! by the validators that must accept them, on every host before any commits.

use anyhow::Result;
use base64::Engine as _;
use serde_json::json;
use std::collections::BTreeMap;

use super::info::RunInfo;
use super::parallel::bounded;
use super::report::host_error;
use super::rollback::abort;
use super::{Run, Work};
use crate::diff::HostChanges;
use crate::error::HostFailure;
use crate::output::Printer;
use crate::plan::{HostPlan, Service};
use crate::protocol;
use crate::protocol::run::{ConfigFile, NginxTree, Stage, StagedFile, StaleLock, Validator};
use crate::render::paths;

/// Stages and validates on every host; if any fails, the others drop what they
/// staged and the run stops with nothing changed, naming each host that failed.
pub(super) async fn stage_all(work: &[Work<'_>], run: &Run<'_>) -> Result<()> {
    let Run {
        info,
        parallel,
        printer,
        ..
    } = *run;
    for (hp, _, _) in work {
        printer.status("Staging", hp.name());
    }
    let staged = bounded(work.to_vec(), parallel, |(hp, hc, r)| async move {
        printer.host_step(hp.name(), "staging and validating");
        let res = protocol::call(r, &stage_request(hp, hc, info)).await;
        let step = if res.is_ok() {
            "validated"
        } else {
            "validation failed"
        };
        printer.host_step(hp.name(), step);
        res
    })
    .await;
    let failures: Vec<HostFailure> = work
        .iter()
        .zip(&staged)
        .filter_map(|((hp, _, _), s)| {
            let e = s.as_ref().err()?;
            Some(HostFailure::new(
                hp.name(),
                host_error(hp.name(), "staging", e),
                e,
            ))
        })
        .collect();
    if !failures.is_empty() {
        // The failed hosts cleaned up after themselves; undo the others.
        let ok: Vec<Work> = work
            .iter()
            .zip(&staged)
            .filter(|(_, s)| s.is_ok())
            .map(|(w, _)| *w)
            .collect();
        abort(&ok, info, parallel, printer).await;
        for f in &failures {
            printer.event(json!({"event": "error", "message": f.line}));
        }
        return Err(crate::error::of_hosts(
            Some("nothing was changed on any host:"),
            &failures,
        ));
    }
    for ((hp, hc, _), answer) in work.iter().zip(&staged) {
        if let Ok(answer) = answer {
            if let Some(old) = &answer.replaced_stale_lock {
                warn_stale_lock(hp, old, printer);
            }
        }
        printer.status(
            "Validated",
            format!("{} ({} files)", hp.name(), hc.files.len()),
        );
    }
    Ok(())
}

/// A lock left by an interrupted run, taken over by this one's stage.
fn warn_stale_lock(hp: &HostPlan, old: &StaleLock, printer: &Printer) {
    printer.warn(format!(
        "{}: the lock left by run {} of {} was taken: its holder had ended (the run was interrupted)",
        hp.name(),
        old.run_id.as_deref().unwrap_or("?"),
        old.owner.as_deref().unwrap_or("?")
    ));
}

/// The validate entry of `svc`'s files: which file (or nginx's tree) the agent checks
/// with the service's validator from the service table (src/services.rs).
fn validator(svc: Service, hp: &HostPlan) -> Option<Validator> {
    let (kind, _) = crate::services::spec(svc).validator?;
    let file = match svc {
        Service::Nginx => {
            let files: Vec<String> = hp
                .files
                .iter()
                .filter(|f| f.service == Service::Nginx)
                .map(|f| f.path.clone())
                .collect();
            return (!files.is_empty()).then(|| {
                Validator::Nginx(NginxTree {
                    root: paths::NGINX_ROOT.to_string(),
                    conf: paths::NGINX_CONF.to_string(),
                    files,
                })
            });
        }
        Service::Haproxy => hp
            .files
            .iter()
            .find(|f| f.service == svc && f.path == paths::HAPROXY_CFG),
        Service::Keepalived => hp.file(paths::KEEPALIVED_CONF),
        Service::Mariadb | Service::Mysql => hp.files.iter().find(|f| f.service == svc),
        Service::Firewall => hp.file(paths::FIREWALL),
        Service::Prometheus => hp.file(paths::PROMETHEUS_YML),
        Service::BlackboxExporter => hp.file(paths::BLACKBOX_YML),
        // Checked by their restart and health check, rolled back if they fail.
        Service::App | Service::NodeExporter | Service::NginxExporter | Service::MysqldExporter => {
            None
        }
    }?;
    Validator::of_file(kind, ConfigFile::of(file))
}

pub(super) fn stage_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Stage {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut expect = BTreeMap::new();
    let mut files = Vec::new();
    let mut deletes = Vec::new();
    let mut validate = Vec::new();
    for f in &hc.files {
        expect.insert(f.path.clone(), f.observed_sha256.clone());
        match &f.new_content {
            Some(content) => files.push(StagedFile {
                path: f.path.clone(),
                content_b64: b64.encode(content),
                mode: f.mode.clone(),
                owner: f.owner.clone(),
                group: f.group.clone(),
                service: f.service,
            }),
            None => deletes.push(f.path.clone()),
        }
    }
    let mut services: Vec<Service> = hc.files.iter().map(|f| f.service).collect();
    services.dedup();
    for svc in services {
        if let Some(v) = validator(svc, hp) {
            if !validate.contains(&v) {
                validate.push(v);
            }
        }
    }
    Stage {
        run_id: run.run_id.clone(),
        lock: run.lock(),
        lock_wait_s: run.lock_timeout,
        expect,
        install: hc.install.clone(),
        users: hc.create_users.clone(),
        files,
        deletes,
        validate,
        history: run.history(hc),
    }
}
