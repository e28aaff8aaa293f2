//! The canary's operation (src/agent/foobar_agent/counters.py): a load balancer's
//! per-server counters of one backend, read from HAProxy's `show stat` (issue 22).

use super::Operation;

wire! {
    /// `haproxy-counters`: every server of `backend` with its counters (none for a
    /// backend this balancer does not have).
    pub struct HaproxyCounters {
        pub backend: String,
    }
}

impl Operation for HaproxyCounters {
    const OP: &'static str = "haproxy-counters";
    type Answer = BackendCounters;
}

answer! {
    pub struct BackendCounters {
        pub servers: Vec<Counters>,
    }
}

answer! {
    /// One server's counters at one load balancer, as HAProxy counts them since its
    /// process started.
    #[derive(PartialEq, Eq)]
    pub struct Counters {
        pub server: String,
        /// HAProxy's status of it (`UP`, `DRAIN`, ...).
        #[serde(default)]
        pub status: String,
        /// HTTP requests (`req_tot`).
        pub req_tot: u64,
        /// 5xx responses the server sent (`hrsp_5xx`).
        pub hrsp_5xx: u64,
        /// Failed connections to it (`econ`).
        pub econ: u64,
        /// Failed responses (`eresp`).
        pub eresp: u64,
        /// Average response time of its last 1024 requests, ms (`rtime`).
        pub rtime: u64,
    }
}
