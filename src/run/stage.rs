//! The stage phase: the request that uploads a host's new files beside the live
//! ones, with the validators that must accept them before anything is swapped in.

use base64::Engine as _;
use serde_json::{json, Value};

use super::info::RunInfo;
use crate::diff::HostChanges;
use crate::plan::{HostPlan, Service};
use crate::render::paths;

fn validator(svc: Service, hp: &HostPlan) -> Option<Value> {
    match svc {
        Service::Nginx => {
            let files: Vec<&str> = hp
                .files
                .iter()
                .filter(|f| f.service == Service::Nginx)
                .map(|f| f.path.as_str())
                .collect();
            (!files.is_empty()).then(|| {
                json!({"kind": "nginx", "root": paths::NGINX_ROOT, "conf": paths::NGINX_CONF, "files": files})
            })
        }
        Service::Haproxy => hp
            .files
            .iter()
            .find(|f| f.service == svc && f.path == paths::HAPROXY_CFG)
            .map(|f| json!({"kind": "haproxy", "path": f.path})),
        Service::Keepalived => hp
            .files
            .iter()
            .find(|f| f.path == paths::KEEPALIVED_CONF)
            .map(|f| json!({"kind": "keepalived", "path": f.path})),
        Service::Mariadb => hp
            .files
            .iter()
            .find(|f| f.service == svc)
            .map(|f| json!({"kind": "mariadb", "path": f.path})),
        Service::Mysql => hp
            .files
            .iter()
            .find(|f| f.service == svc)
            .map(|f| json!({"kind": "mysql8", "path": f.path})),
        Service::Firewall => hp
            .file(paths::FIREWALL)
            .map(|f| json!({"kind": "nft", "path": f.path})),
        Service::Prometheus => hp
            .file(paths::PROMETHEUS_YML)
            .map(|f| json!({"kind": "prometheus", "path": f.path})),
        Service::BlackboxExporter => hp
            .file(paths::BLACKBOX_YML)
            .map(|f| json!({"kind": "blackbox", "path": f.path})),
        // Checked by their restart and health check, rolled back if they fail.
        Service::App | Service::NodeExporter | Service::NginxExporter | Service::MysqldExporter => {
            None
        }
    }
}

pub(super) fn stage_request(hp: &HostPlan, hc: &HostChanges, run: &RunInfo) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut expect = serde_json::Map::new();
    let mut files = Vec::new();
    let mut deletes = Vec::new();
    let mut validate = Vec::new();
    for f in &hc.files {
        expect.insert(f.path.clone(), json!(f.observed_sha256));
        match &f.new_content {
            Some(content) => files.push(json!({
                "path": f.path, "content_b64": b64.encode(content), "mode": f.mode,
                "owner": f.owner, "group": f.group, "service": f.service,
            })),
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
    json!({
        "op": "stage", "run_id": run.run_id, "lock": run.lock(), "lock_wait_s": run.lock_timeout,
        "expect": expect, "install": hc.install, "users": hc.create_users, "files": files, "deletes": deletes,
        "validate": validate, "history": run.history(hc),
    })
}
