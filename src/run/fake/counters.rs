//! The fake fleet's load balancers' counters for the canary (test-only): each read
//! counts 10 requests to every server UP, 2 of them failed on a server whose live files
//! hold the bad config; and each host's release, to check a canary's restore.

use std::collections::BTreeMap;

use super::{status, Fleet, Host};
use crate::protocol::counters::BackendCounters;
use crate::protocol::release::ServerState;

impl Fleet {
    /// From now on a web server whose live files contain `text` fails 1 request in 5
    /// (seen in the load balancers' counters).
    pub fn fail_requests_with(&self, text: &str) {
        *self.bad_config.lock().unwrap() = Some(text.to_string());
    }

    /// Each host's current release.
    pub fn releases(&self) -> BTreeMap<String, Option<String>> {
        let hosts = self.hosts.lock().unwrap();
        let current = |h: &Host| h.release.as_ref().and_then(|r| r.current.clone());
        hosts.iter().map(|(n, h)| (n.clone(), current(h))).collect()
    }

    /// `haproxy-counters` on `lb`: its servers' counters, grown since the last read.
    pub(super) fn counters(&self, hosts: &mut BTreeMap<String, Host>, lb: &str) -> BackendCounters {
        let bad = self.bad_config.lock().unwrap().clone();
        let fails = |h: &Host| {
            bad.as_ref()
                .is_some_and(|b| h.files.values().any(|f| f.content.contains(b)))
        };
        let failing: Vec<String> = hosts
            .iter()
            .filter(|(_, h)| fails(h))
            .map(|(n, _)| n.clone())
            .collect();
        let h = hosts.get_mut(lb).expect("a load balancer");
        for (server, state) in &h.backends {
            let c = h.counters.entry(server.clone()).or_default();
            c.server = server.clone();
            c.status = status(*state).into();
            if *state == ServerState::Ready {
                c.req_tot += 10;
                c.hrsp_5xx += if failing.contains(server) { 2 } else { 0 };
            }
        }
        BackendCounters {
            servers: h.counters.values().cloned().collect(),
            ..BackendCounters::default()
        }
    }
}
