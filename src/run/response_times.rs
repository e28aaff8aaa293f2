//! The canary's samples of the load balancers (issue 22): every balancer's per-server
//! counters, and for a p95 (`rollout.max_p95_ms`) the response times its request log
//! (haproxy.cfg's ring, [`RESPONSE_TIME_RING`]) holds for the window, checked before
//! use, merged over the balancers and ranked. The checks and the percentile are pure;
//! [`sample`] does the I/O.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::report::host_failure;
use crate::plan::HostPlan;
use crate::protocol::counters::{BackendCounters, Counters, HaproxyCounters, ResponseTimes};
use crate::protocol::{self};
use crate::remote::Remote;
use crate::render::RESPONSE_TIME_RING;

/// Every load balancer's counters at one moment: load balancer name -> servers.
pub type Sample = BTreeMap<String, Vec<Counters>>;

/// Fewer requests with a response time than this in the window: the p95 is not judged
/// (at 20, the p95 is the second slowest; below, it is the slowest, one request).
pub const MIN_P95_REQUESTS: u64 = 20;

/// What one server's response times at one load balancer may hold: distinct values
/// (the agent sends each value once with its count), the highest value (a day, ms;
/// HAProxy's `timeout server` ends a response long before) and requests in all (the
/// ring holds some 20,000 lines; this leaves room and stays far from overflow).
const MAX_DISTINCT: usize = 100_000;
const MAX_MS: u64 = 86_400_000;
const MAX_REQUESTS: u64 = 10_000_000;

/// One sampling of every load balancer.
#[derive(Debug, Default)]
pub struct Reading {
    pub counters: Sample,
    /// Each balancer's clock when it answered (ms since the epoch): a window's start.
    pub clocks: BTreeMap<String, u64>,
    /// Balancers asked for response times that keep no request log (no ring yet).
    pub untimed: Vec<String>,
    /// Lines of the balancers' request logs that did not parse (skipped).
    pub skipped: u64,
}

/// Reads every load balancer's counters of the `web` backend; with `since` (a clock
/// per balancer, from an earlier [`Reading`]), also each server's response times
/// logged from then on, each balancer's answer checked ([`check`]).
pub async fn sample(
    lbs: &[(&HostPlan, &dyn Remote)],
    since: Option<&BTreeMap<String, u64>>,
) -> Result<Reading> {
    let mut out = Reading::default();
    for (lb, r) in lbs {
        let request = HaproxyCounters {
            backend: "web".into(),
            response_times: since.map(|s| ResponseTimes {
                ring: RESPONSE_TIME_RING.into(),
                since_ms: s.get(lb.name()).copied().unwrap_or(u64::MAX),
            }),
        };
        let answer = protocol::call(*r, &request)
            .await
            .and_then(|a| check(&a).map(|()| a))
            .map_err(|e| host_failure(lb.name(), "reading HAProxy's counters", &e))?;
        if since.is_some() && !answer.timed {
            out.untimed.push(lb.name().to_string());
        }
        out.skipped += answer.skipped;
        out.clocks.insert(lb.name().to_string(), answer.now_ms);
        out.counters.insert(lb.name().to_string(), answer.servers);
    }
    Ok(out)
}

/// A load balancer's response times are what they can be: for each server, distinct
/// values in ascending order, each within a day and counted at least once, and not
/// more of them than the bounds above. Anything else is refused, not trimmed: a
/// verdict is not drawn from an answer that cannot be right.
pub fn check(answer: &BackendCounters) -> Result<()> {
    for c in &answer.servers {
        let times = &c.response_ms;
        if times.len() > MAX_DISTINCT {
            bail!(
                "{}: {} response time values (at most {MAX_DISTINCT})",
                c.server,
                times.len()
            );
        }
        let mut total = 0u64;
        for (i, &(ms, n)) in times.iter().enumerate() {
            if ms > MAX_MS || n == 0 || (i > 0 && times[i - 1].0 >= ms) {
                bail!(
                    "{}: response times out of order or bounds at {ms} ms x {n}",
                    c.server
                );
            }
            total = total.saturating_add(n);
        }
        if total > MAX_REQUESTS {
            bail!(
                "{}: {total} requests with a response time (at most {MAX_REQUESTS})",
                c.server
            );
        }
    }
    Ok(())
}

/// Response times of a group of servers: ms -> requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Times(BTreeMap<u64, u64>);

impl Times {
    /// The response times the servers `pick` selects logged in the window, summed over
    /// the load balancers of `now` (answers [`check`]ed).
    pub fn of(now: &Sample, pick: impl Fn(&str) -> bool) -> Times {
        let mut t = Times::default();
        for c in now.values().flatten().filter(|c| pick(&c.server)) {
            for &(ms, n) in &c.response_ms {
                *t.0.entry(ms).or_default() += n;
            }
        }
        t
    }

    pub fn requests(&self) -> u64 {
        self.0.values().sum()
    }

    /// The `p`th percentile (0 < p <= 100) by nearest rank: the smallest value at or
    /// below which at least p% of the requests fall (none without requests).
    pub fn percentile(&self, p: u32) -> Option<u64> {
        let n = self.requests();
        let rank = (n * u64::from(p)).div_ceil(100).max(1);
        let mut seen = 0;
        for (&ms, &count) in &self.0 {
            seen += count;
            if seen >= rank {
                return Some(ms);
            }
        }
        None
    }

    /// The p95 when there are at least [`MIN_P95_REQUESTS`] requests to rank.
    pub fn p95(&self) -> Option<u64> {
        (self.requests() >= MIN_P95_REQUESTS)
            .then(|| self.percentile(95))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(pairs: &[(u64, u64)]) -> Times {
        Times(pairs.iter().copied().collect())
    }

    #[test]
    fn the_p95_is_the_nearest_rank_and_needs_twenty_requests() {
        // 1..=100 ms once each: p95 is 95, p50 50, p100 the slowest.
        let t = times(&(1..=100).map(|ms| (ms, 1)).collect::<Vec<_>>());
        assert_eq!(t.percentile(95), Some(95));
        assert_eq!(t.percentile(50), Some(50));
        assert_eq!(t.percentile(100), Some(100));
        assert_eq!(t.p95(), Some(95));
        // 20 requests: rank 19, the second slowest.
        let t = times(&[(5, 18), (300, 1), (900, 1)]);
        assert_eq!(t.p95(), Some(300));
        // 19 fast and 1 slow of 20 (5%): the p95 is still fast.
        assert_eq!(times(&[(5, 19), (900, 1)]).p95(), Some(5));
        // 2 slow of 20 (10%): slow.
        assert_eq!(times(&[(5, 18), (900, 2)]).p95(), Some(900));
        // Too few to judge, and nothing at all.
        let few = times(&[(300, 19)]);
        assert_eq!((few.requests(), few.p95()), (19, None));
        assert_eq!(few.percentile(95), Some(300));
        assert_eq!(Times::default().percentile(95), None);
        assert_eq!(Times::default().p95(), None);
    }

    fn server(name: &str, response_ms: &[(u64, u64)]) -> Counters {
        Counters {
            server: name.into(),
            response_ms: response_ms.to_vec(),
            ..Counters::default()
        }
    }

    #[test]
    fn times_are_merged_per_group_over_every_balancer() {
        let now: Sample = [
            (
                "lb-01".to_string(),
                vec![
                    server("web-01", &[(300, 10), (310, 5)]),
                    server("web-02", &[(4, 30)]),
                ],
            ),
            (
                "lb-02".to_string(),
                vec![
                    server("web-01", &[(300, 3), (320, 2)]),
                    server("web-02", &[(6, 10)]),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let canary = Times::of(&now, |s| s == "web-01");
        assert_eq!(canary, times(&[(300, 13), (310, 5), (320, 2)]));
        assert_eq!(canary.p95(), Some(320));
        let old = Times::of(&now, |s| s != "web-01");
        assert_eq!((old.requests(), old.p95()), (40, Some(6)));
    }

    #[test]
    fn an_answer_that_cannot_be_right_is_refused() {
        let answer = |pairs: Vec<(u64, u64)>| BackendCounters {
            servers: vec![server("web-01", &pairs)],
            ..BackendCounters::default()
        };
        assert!(check(&answer(vec![(1, 1), (5, 3), (86_400_000, 1)])).is_ok());
        assert!(check(&answer(Vec::new())).is_ok());
        for bad in [
            vec![(5, 1), (5, 1)],               // repeated value
            vec![(6, 1), (5, 1)],               // out of order
            vec![(5, 0)],                       // counted zero times
            vec![(86_400_001, 1)],              // beyond a day
            vec![(1, MAX_REQUESTS), (2, 1)],    // too many requests
            vec![(1, u64::MAX), (2, u64::MAX)], // would overflow
        ] {
            let e = check(&answer(bad.clone())).unwrap_err().to_string();
            assert!(e.starts_with("web-01: "), "{bad:?}: {e}");
        }
        let many = (0..=MAX_DISTINCT as u64).map(|ms| (ms, 1)).collect();
        assert!(check(&answer(many)).is_err());
    }

    /// canary.rs's judge and report with a p95 (that file is at its size limit).
    #[test]
    fn the_canary_fails_on_its_p95_only_with_enough_requests() {
        use super::super::canary::{judge, Report, Traffic, Verdict};
        use crate::inventory::rollout::Rollout;
        let limits = Rollout {
            max_p95_ms: Some(150),
            ..Rollout::default()
        };
        let t = |requests| Traffic {
            requests,
            ..Traffic::default()
        };
        let slow = t(40).timed(&times(&[(300, 37), (310, 3)]));
        let fast = t(80).timed(&times(&[(5, 76), (9, 4)]));
        assert_eq!((slow.timed, slow.p95_ms), (Some(40), Some(310)));
        let broken = judge(&slow, &fast, &limits);
        assert_eq!(
            broken,
            ["p95 response time 310 ms over 40 requests (old release: p95 5 ms (80 requests)); limit 150 ms"]
        );
        // At the limit passes; without a limit the p95 is only reported.
        assert!(judge(&t(40).timed(&times(&[(150, 40)])), &fast, &limits).is_empty());
        assert!(judge(&slow, &fast, &Rollout::default()).is_empty());
        // Too few timed requests: not judged, and said so.
        let few = t(19).timed(&times(&[(900, 19)]));
        assert_eq!((few.timed, few.p95_ms), (Some(19), None));
        assert!(judge(&few, &fast, &limits).is_empty());
        let report = |canary: Traffic, verdict| Report {
            verdict,
            canaries: vec!["web-01".into()],
            others: vec!["web-02".into()],
            balancers: vec!["lb-01".into()],
            window_s: 15.0,
            samples: 5,
            broken: judge(&canary, &fast, &limits),
            canary,
            old: fast.clone(),
        };
        let text = report(few, Verdict::Pass).summary();
        assert!(
            text.contains("0.0%, p95 not judged: 19 requests; old release (web-02)"),
            "{text}"
        );
        assert!(
            text.contains("0.0%, p95 5 ms (80 requests); over 15.0 s"),
            "{text}"
        );
        let text = report(slow, Verdict::Fail).summary();
        assert!(
            text.starts_with("canary failed: p95 response time 310 ms"),
            "{text}"
        );
        // Not measured (no p95 limit): the report is as before.
        let text = report(t(40), Verdict::Pass).summary();
        assert!(
            text.contains(
                "web-01: 40 requests, 0 failed (0 5xx, 0 connection, 0 response errors), 0.0%; old"
            ),
            "{text}"
        );
    }
}
