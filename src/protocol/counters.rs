//! The canary's operation (src/agent/foobar_agent/counters.py): a load balancer's
//! per-server counters of one backend, read from HAProxy's `show stat`, and for a p95
//! each server's response times from the request log haproxy.cfg keeps in a ring
//! (`show events`) (issue 22).

use super::Operation;

wire! {
    /// `haproxy-counters`: every server of `backend` with its counters (none for a
    /// backend this balancer does not have).
    pub struct HaproxyCounters {
        pub backend: String,
        /// With a p95 to judge: also each server's response times since a moment.
        pub response_times: Option<ResponseTimes>,
    }
}

wire! {
    /// Which ring of haproxy.cfg holds the request log, and from when its lines count.
    pub struct ResponseTimes {
        pub ring: String,
        /// Milliseconds since the epoch on the load balancer's clock (its own `now_ms`
        /// of an earlier answer, so the two hosts' clocks never meet).
        pub since_ms: u64,
    }
}

impl Operation for HaproxyCounters {
    const OP: &'static str = "haproxy-counters";
    type Answer = BackendCounters;
}

answer! {
    pub struct BackendCounters {
        pub servers: Vec<Counters>,
        /// The load balancer's clock when it answered (ms since the epoch).
        pub now_ms: u64,
        /// Response times were read: asked for, and the ring exists.
        pub timed: bool,
        /// Lines of the ring that did not parse (skipped, not counted).
        pub skipped: u64,
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
        /// When asked for: the response times (%Tr) of the requests it answered since
        /// `since_ms`, as (ms, requests) pairs.
        pub response_ms: Vec<(u64, u64)>,
    }
}
