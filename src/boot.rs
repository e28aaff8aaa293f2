//! Starting at boot: a service the plan runs on a host must also start when the host
//! boots, and one whose role left the host must not. The agent's observe reports each
//! service's state (`enabled`: `systemctl is-enabled`, or an `S??NAME` link in
//! /etc/rc2.d) and commit changes it (its request's `boot` entries; src/agent/foobar_agent/boot.py).
//! A service that is started or restarted is enabled by the agent as it starts, so only
//! the others need an entry of their own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::diff::ServiceChange;
use crate::plan::{HostPlan, Service, ServiceAction};
use crate::protocol::run::BootEntry;
use crate::remote::agent::HostState;

/// What happens to a service's start at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootAction {
    /// `update-rc.d NAME defaults` then `update-rc.d NAME enable` (`defaults` alone does
    /// nothing for a service that was disabled); `systemctl enable NAME` under systemd.
    Enable,
    /// `update-rc.d NAME disable` (`remove` once its init script is gone);
    /// `systemctl disable NAME`.
    Disable,
}

/// A service to enable or disable at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootChange {
    pub service: Service,
    pub action: BootAction,
}

impl BootChange {
    /// Its line in `diff`.
    pub fn describe(&self) -> String {
        match self.action {
            BootAction::Enable => {
                format!("{} is not enabled at boot (apply enables it)", self.service)
            }
            BootAction::Disable => format!(
                "{} is enabled at boot and no longer planned on this host (apply disables it)",
                self.service
            ),
        }
    }

    /// In the apply summary, once done.
    pub fn done(&self) -> String {
        match self.action {
            BootAction::Enable => format!("{} enabled at boot", self.service),
            BootAction::Disable => format!("{} disabled at boot", self.service),
        }
    }

    /// The entry of the commit request.
    pub fn request(&self) -> BootEntry {
        BootEntry {
            service: self.service.unit().to_string(),
            enable: self.action == BootAction::Enable,
        }
    }

    /// The `apply --json` event.
    pub fn event(&self, host: &str) -> Value {
        json!({"event": "service-boot", "host": host, "service": self.service, "action": self.action})
    }
}

/// A host's changes at boot. `actions`: what diff does to its services (a start or a
/// restart enables the service as it starts); `left`: the services whose role left the
/// host. A service the agent gave no answer for is left alone.
pub fn changes(
    hp: &HostPlan,
    state: &HostState,
    actions: &[ServiceChange],
    left: &[Service],
) -> Vec<BootChange> {
    let enabled = |svc: Service| state.services.get(svc.unit()).and_then(|s| s.enabled);
    let starts = |svc: Service| {
        actions.iter().any(|a| {
            a.service == svc && matches!(a.action, ServiceAction::Start | ServiceAction::Restart)
        })
    };
    let enable = hp
        .services
        .iter()
        .filter(|&&svc| enabled(svc) == Some(false) && !starts(svc))
        .map(|&service| BootChange {
            service,
            action: BootAction::Enable,
        });
    let disable = left
        .iter()
        .filter(|&&svc| enabled(svc) == Some(true))
        .map(|&service| BootChange {
            service,
            action: BootAction::Disable,
        });
    enable.chain(disable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff_host;
    use crate::plan::Init;
    use crate::run::info::RunInfo;
    use crate::secrets::Secrets;
    use crate::witness::{InSync, Witness};

    /// web-02 of the lab as a web server only, and a state in sync with it (what the
    /// witness stands for: every file as planned, services running and enabled).
    fn in_sync(init: Init) -> (HostPlan, HostState, Secrets) {
        let (hp, secrets) = crate::witness::tests::web_only();
        let w = Witness::for_host(&hp, &secrets).unwrap().unwrap();
        let st = w.state(&InSync {
            init,
            hostname: "web-02".into(),
            pids: vec![],
        });
        assert!(diff_host(&hp, &st, &secrets).unwrap().is_empty());
        (hp, st, secrets)
    }

    #[test]
    fn a_planned_service_off_at_boot_is_drift_that_apply_enables() {
        for init in [Init::Sysv, Init::Systemd] {
            let (hp, mut st, secrets) = in_sync(init);
            st.services.get_mut("nginx").unwrap().enabled = Some(false);
            let hc = diff_host(&hp, &st, &secrets).unwrap();
            let nginx = BootChange {
                service: Service::Nginx,
                action: BootAction::Enable,
            };
            assert_eq!(hc.boot, [nginx], "{init:?}");
            assert!(!hc.is_empty() && !hc.files_unchanged() && !hc.manifest_only());
            assert!(hc.files.is_empty() && hc.services.is_empty());
            assert_eq!(
                nginx.describe(),
                "nginx is not enabled at boot (apply enables it)"
            );
            assert_eq!(nginx.done(), "nginx enabled at boot");
            let event = nginx.event("web-02");
            assert_eq!(event["event"], "service-boot");
            assert_eq!(event["action"], "enable");
            assert_eq!(event["service"], "nginx");

            // The commit request carries it (and no file, no action).
            let req = crate::run::commit::commit_request(&hp, &hc, &RunInfo::none());
            let req = crate::protocol::to_value(&req).unwrap();
            assert_eq!(req["boot"], json!([{"service": "nginx", "enable": true}]));
            assert_eq!(req["files"], json!([]));
            assert_eq!(req["actions"], json!([]));
            // diff --json shows it.
            let v = serde_json::to_value(&hc).unwrap();
            assert_eq!(v["boot"], json!([{"service": "nginx", "action": "enable"}]));
        }
    }

    #[test]
    fn a_start_or_restart_enables_by_itself_and_an_unknown_state_is_left_alone() {
        let (hp, mut st, secrets) = in_sync(Init::Sysv);
        let nginx = st.services.get_mut("nginx").unwrap();
        nginx.enabled = Some(false);
        nginx.running = false;
        let hc = diff_host(&hp, &st, &secrets).unwrap();
        assert!(hc.boot.is_empty(), "{:?}", hc.boot);
        assert_eq!(hc.services[0].action, ServiceAction::Start);

        let (hp, mut st, secrets) = in_sync(Init::Sysv);
        for s in st.services.values_mut() {
            s.enabled = None; // an agent that does not say
        }
        assert!(diff_host(&hp, &st, &secrets).unwrap().is_empty());
    }

    #[test]
    fn a_service_whose_role_left_is_disabled_at_boot_as_it_stops() {
        let (mut hp, mut st, secrets) = in_sync(Init::Sysv);
        // The application leaves web-02: its files are in the manifest, not in the plan.
        hp.files.retain(|f| f.service != Service::App);
        hp.services.retain(|&s| s != Service::App);
        hp.release = None;
        hp.users.clear();
        let app = st.services.get_mut("foobar-app").unwrap();
        app.enabled = Some(true);
        let hc = diff_host(&hp, &st, &secrets).unwrap();
        assert!(hc
            .services
            .iter()
            .any(|s| s.service == Service::App && s.action == ServiceAction::Stop));
        let app = BootChange {
            service: Service::App,
            action: BootAction::Disable,
        };
        assert_eq!(hc.boot, [app]);
        let req = crate::run::commit::commit_request(&hp, &hc, &RunInfo::none());
        let req = crate::protocol::to_value(&req).unwrap();
        assert_eq!(
            req["boot"],
            json!([{"service": "foobar-app", "enable": false}])
        );
        // Already off at boot: only the stop.
        st.services.get_mut("foobar-app").unwrap().enabled = Some(false);
        assert!(diff_host(&hp, &st, &secrets).unwrap().boot.is_empty());
    }
}
