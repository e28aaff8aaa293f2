//! The canary stage of a release rollout (issue 22): the first web servers switched are
//! watched through every load balancer's own per-server counters (HAProxy `show stat`)
//! and compared with the servers still on the old release; the verdict says whether
//! the rollout goes on. Sampling sums and the judgement are pure; [`watch`] does the I/O.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use super::response_times::{sample, Times};
pub use super::response_times::{Sample, MIN_P95_REQUESTS};
use crate::inventory::rollout::{NoTraffic, Rollout};
use crate::output::Printer;
use crate::plan::HostPlan;
pub use crate::protocol::counters::Counters;
use crate::remote::Remote;

/// A canary that failed this many requests or more may be judged before the window ends.
const EARLY_REQUESTS: u64 = 20;

/// What a group of servers did within the window, summed over the load balancers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub http_5xx: u64,
    pub conn_errors: u64,
    pub resp_errors: u64,
    /// The highest average response time among the group's servers that served in the
    /// window (ms; none without requests).
    pub rtime_ms: Option<u64>,
    /// With a p95 limit: the requests the load balancers' request logs timed in the
    /// window (none: not measured).
    pub timed: Option<u64>,
    /// Their 95th percentile response time, ms (none below [`MIN_P95_REQUESTS`]).
    pub p95_ms: Option<u64>,
}

impl Traffic {
    /// With the response times the group's requests took in the window.
    pub fn timed(self, times: &Times) -> Traffic {
        Traffic {
            timed: Some(times.requests()),
            p95_ms: times.p95(),
            ..self
        }
    }

    /// "p95 302 ms (40 requests)", "p95 not judged: 12 requests", or nothing when not
    /// measured.
    fn p95_text(&self) -> Option<String> {
        let n = self.timed?;
        Some(match self.p95_ms {
            Some(ms) => format!("p95 {ms} ms ({n} requests)"),
            None => format!("p95 not judged: {n} requests"),
        })
    }

    pub fn errors(&self) -> u64 {
        self.http_5xx + self.conn_errors + self.resp_errors
    }

    /// Errors per request (0 without requests).
    pub fn rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors() as f64 / self.requests as f64
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"requests": self.requests, "errors": self.errors(), "http_5xx": self.http_5xx,
               "conn_errors": self.conn_errors, "resp_errors": self.resp_errors,
               "error_rate": self.rate(), "rtime_ms": self.rtime_ms,
               "timed": self.timed, "p95_ms": self.p95_ms})
    }
}

/// A counter's growth from `a` to `b`; a counter that went down restarted (HAProxy
/// reloaded) and counts from zero.
fn grown(a: u64, b: u64) -> u64 {
    if b >= a {
        b - a
    } else {
        b
    }
}

/// The traffic of the servers `pick` selects between two samples.
pub fn traffic(start: &Sample, now: &Sample, pick: impl Fn(&str) -> bool) -> Traffic {
    let mut t = Traffic::default();
    for (lb, servers) in now {
        for c in servers.iter().filter(|c| pick(&c.server)) {
            let zero = Counters::default();
            let s = (start.get(lb).into_iter().flatten())
                .find(|x| x.server == c.server)
                .unwrap_or(&zero);
            let requests = grown(s.req_tot, c.req_tot);
            t.requests += requests;
            t.http_5xx += grown(s.hrsp_5xx, c.hrsp_5xx);
            t.conn_errors += grown(s.econ, c.econ);
            t.resp_errors += grown(s.eresp, c.eresp);
            if requests > 0 {
                t.rtime_ms = t.rtime_ms.max(Some(c.rtime));
            }
        }
    }
    t
}

/// The outcome of a canary window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The canary got no request in the window.
    NoTraffic,
}

/// The limits the canary broke (empty: within them).
pub fn judge(canary: &Traffic, others: &Traffic, limits: &Rollout) -> Vec<String> {
    let mut broken = Vec::new();
    if canary.rate() > others.rate() + limits.max_error_rate {
        broken.push(format!(
            "error rate {} ({} of {} requests) against {} ({} of {}) on the old release; limit {} above it",
            pct(canary.rate()),
            canary.errors(),
            canary.requests,
            pct(others.rate()),
            others.errors(),
            others.requests,
            pct(limits.max_error_rate)
        ));
    }
    if let (Some(max), Some(ms)) = (limits.max_response_ms, canary.rtime_ms) {
        if ms > max {
            broken.push(format!(
                "average response time {ms} ms (old release: {}); limit {max} ms",
                others
                    .rtime_ms
                    .map_or("no requests".to_string(), |o| format!("{o} ms"))
            ));
        }
    }
    if let (Some(max), Some(ms)) = (limits.max_p95_ms, canary.p95_ms) {
        if ms > max {
            broken.push(format!(
                "p95 response time {ms} ms over {} requests (old release: {}); limit {max} ms",
                canary.timed.unwrap_or(0),
                others.p95_text().unwrap_or_else(|| "not measured".into())
            ));
        }
    }
    broken
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

/// What a window ended with, for the run's error, `--json` and `status`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub canaries: Vec<String>,
    pub others: Vec<String>,
    pub balancers: Vec<String>,
    pub window_s: f64,
    pub samples: usize,
    pub canary: Traffic,
    pub old: Traffic,
    pub broken: Vec<String>,
}

impl Report {
    /// One paragraph: who, what was counted, over which window, and the verdict.
    pub fn summary(&self) -> String {
        let who = self.canaries.join(", ");
        let p95 = |t: &Traffic| t.p95_text().map_or(String::new(), |s| format!(", {s}"));
        let counts = format!(
            "{who}: {} requests, {} failed ({} 5xx, {} connection, {} response errors), \
             {}{}; old release ({}): {} requests, {} failed, {}{}; over {:.1} s at {}",
            self.canary.requests,
            self.canary.errors(),
            self.canary.http_5xx,
            self.canary.conn_errors,
            self.canary.resp_errors,
            pct(self.canary.rate()),
            p95(&self.canary),
            self.others.join(", "),
            self.old.requests,
            self.old.errors(),
            pct(self.old.rate()),
            p95(&self.old),
            self.window_s,
            self.balancers.join(", ")
        );
        match self.verdict {
            Verdict::Pass => format!("canary passed: {counts}"),
            Verdict::Fail => format!("canary failed: {}\n{counts}", self.broken.join("; ")),
            Verdict::NoTraffic => {
                format!("canary not judged: no request reached {who} in the window\n{counts}")
            }
        }
    }
}

/// One sample's event (`--json`) and its `-v` line.
fn print_sample(printer: &Printer, seconds: f64, canary: &Traffic, old: &Traffic, skipped: u64) {
    printer.event(json!({"event": "canary-sample", "seconds": seconds,
                         "canary": canary.json(), "old": old.json(),
                         "skipped_log_lines": skipped}));
    let p95 = |t: &Traffic| t.p95_text().map_or(String::new(), |s| format!(", {s}"));
    printer.detail(
        "Canary",
        format!(
            "{seconds:.0} s: {} of {} failed ({}){}; old release {} of {}{}",
            canary.errors(),
            canary.requests,
            pct(canary.rate()),
            p95(canary),
            old.errors(),
            old.requests,
            p95(old)
        ),
    );
}

/// The warning for load balancers asked for response times that keep no request log.
fn untimed(lbs: &[String]) -> String {
    format!(
        "{} keep(s) no request log for the p95 (haproxy.cfg without its ring {} yet): \
         the p95 counts the requests of the other load balancers only",
        lbs.join(", "),
        crate::render::RESPONSE_TIME_RING
    )
}

/// Watches `canaries` for `limits.watch` (sampling every few seconds, one event per
/// sample) and returns the verdict. Ends early once the canary failed at least
/// [`EARLY_REQUESTS`] requests' worth beyond the limits.
pub async fn watch(
    canaries: &[String],
    lbs: &[(&HostPlan, &dyn Remote)],
    limits: &Rollout,
    printer: &Printer,
) -> Result<Report> {
    let is_canary = |s: &str| canaries.iter().any(|c| c == s);
    let start = sample(lbs, None).await?;
    // A p95 counts the requests each balancer logged from its own clock's start on.
    let since = limits.max_p95_ms.map(|_| start.clocks.clone());
    let start = start.counters;
    let t0 = Instant::now();
    let mut others: Vec<String> = (start.values().flatten())
        .filter(|c| !is_canary(&c.server))
        .map(|c| c.server.clone())
        .collect();
    others.sort();
    others.dedup();
    printer.status(
        "Watching",
        format!(
            "{} for {:.0} s against {} ({} load balancer(s))",
            canaries.join(", "),
            limits.watch.as_secs_f64(),
            others.join(", "),
            lbs.len()
        ),
    );
    let every = (limits.watch / 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let mut samples = 0;
    let (canary, old) = loop {
        let left = limits.watch.saturating_sub(t0.elapsed());
        tokio::time::sleep(every.min(left)).await;
        let now = sample(lbs, since.as_ref()).await?;
        if samples == 0 && !now.untimed.is_empty() {
            printer.warn(untimed(&now.untimed));
        }
        samples += 1;
        let mut canary = traffic(&start, &now.counters, is_canary);
        let mut old = traffic(&start, &now.counters, |s| !is_canary(s));
        if since.is_some() {
            canary = canary.timed(&Times::of(&now.counters, is_canary));
            old = old.timed(&Times::of(&now.counters, |s| !is_canary(s)));
        }
        print_sample(
            printer,
            t0.elapsed().as_secs_f64(),
            &canary,
            &old,
            now.skipped,
        );
        let early = canary.errors() >= 1
            && canary.requests >= EARLY_REQUESTS
            && !judge(&canary, &old, limits).is_empty();
        if early || t0.elapsed() >= limits.watch {
            break (canary, old);
        }
    };
    let broken = judge(&canary, &old, limits);
    let verdict = if canary.requests == 0 {
        Verdict::NoTraffic
    } else if broken.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(Report {
        verdict,
        canaries: canaries.to_vec(),
        others,
        balancers: lbs.iter().map(|(lb, _)| lb.name().to_string()).collect(),
        window_s: t0.elapsed().as_secs_f64(),
        samples,
        canary,
        old,
        broken,
    })
}

/// The canary stage a run does: its limits and where its verdict is kept.
#[derive(Clone, Debug)]
pub struct Canary {
    pub limits: Rollout,
    /// This controller's record of the last verdict for the inventory (for `status`).
    pub record: Option<PathBuf>,
    /// Asked for with `--canary N` (refused when N covers every web server that
    /// changes), not only the inventory's `rollout:` (skipped then, saying so).
    pub explicit: bool,
}

impl Canary {
    /// The stage `apply` does: the inventory's `rollout:`, `--canary N` (with the
    /// section's window and limits, or the defaults), none with `--no-canary`.
    pub fn choose(
        section: Option<&Rollout>,
        canary: Option<usize>,
        no_canary: bool,
        inventory: &Path,
    ) -> Option<Canary> {
        if no_canary {
            return None;
        }
        let mut limits = match (section, canary) {
            (None, None) => return None,
            (Some(r), _) => r.clone(),
            (None, Some(_)) => Rollout::default(),
        };
        if let Some(n) = canary {
            limits.canary = n;
        }
        (limits.canary > 0).then(|| Canary {
            limits,
            record: record_path(inventory),
            explicit: canary.is_some(),
        })
    }

    /// Watches the canaries (all changed now: `release`, if it switched, and `change`
    /// says what, e.g. "release 3f2a9c1d and files") and says whether the rollout goes
    /// on: Err with the report when it stops. Keeps the verdict for `status`.
    pub async fn judge(
        &self,
        canaries: &[String],
        (release, change): (Option<&str>, &str),
        lbs: &[(&HostPlan, &dyn Remote)],
        printer: &Printer,
    ) -> Result<()> {
        let report = watch(canaries, lbs, &self.limits, printer).await?;
        let goes_on = goes_on(&report, &self.limits);
        printer.event(
            json!({"event": "canary-verdict", "release": release, "change": change,
                             "goes_on": goes_on, "report": report}),
        );
        if let Some(path) = &self.record {
            let kept = json!({"schema": 1, "at": super::info::chrono_now(),
                              "release": release, "change": change, "goes_on": goes_on,
                              "report": report, "summary": report.summary()});
            if let Err(e) = save_record(path, &kept) {
                printer.warn(format!("the canary's verdict was not kept: {e:#}"));
            }
        }
        let text = report.summary();
        match report.verdict {
            Verdict::Pass => {
                printer.status(
                    "Canary",
                    format!("{text} (the watch added {:.1} s)", report.window_s),
                );
                Ok(())
            }
            Verdict::NoTraffic if goes_on => {
                printer.warn(format!("{text}; on_no_traffic: proceed"));
                Ok(())
            }
            _ => anyhow::bail!("{text}"),
        }
    }
}

/// `$XDG_STATE_HOME/foobar-infra/canary/HASH.json` (HASH of the inventory's path).
pub fn record_path(inventory: &Path) -> Option<PathBuf> {
    let dir = crate::address_book::default_dir()?.parent()?.join("canary");
    Some(crate::address_book::file_for(&dir, inventory))
}

fn save_record(path: &Path, doc: &serde_json::Value) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let _ = std::fs::remove_file(&partial);
    crate::private_file::write(path, format!("{doc:#}\n").as_bytes())
}

/// The last canary verdict kept for `inventory` (none yet: None).
pub fn last_verdict(inventory: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(record_path(inventory)?).ok()?;
    serde_json::from_str(&text).ok()
}

/// `status`'s line for a kept verdict.
pub fn verdict_line(doc: &serde_json::Value) -> String {
    let summary = doc["summary"].as_str().unwrap_or("");
    // A verdict kept before config canaries names only its release.
    let change = (doc["change"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("release {}", doc["release"].as_str().unwrap_or("?")));
    format!(
        "Last canary ({}, {change}): {}{}",
        doc["at"].as_str().unwrap_or("?"),
        summary.replace('\n', "; "),
        if doc["goes_on"] == true {
            ""
        } else {
            " (the rollout stopped there)"
        }
    )
}

/// Whether the rollout goes on after `report`: a failure, or no traffic with
/// `on_no_traffic: halt`, stops it.
pub fn goes_on(report: &Report, limits: &Rollout) -> bool {
    match report.verdict {
        Verdict::Pass => true,
        Verdict::Fail => false,
        Verdict::NoTraffic => limits.on_no_traffic == NoTraffic::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(server: &str, req: u64, e5: u64, rtime: u64) -> Counters {
        Counters {
            server: server.into(),
            status: "UP".into(),
            req_tot: req,
            hrsp_5xx: e5,
            rtime,
            ..Counters::default()
        }
    }

    fn at(lbs: &[(&str, Vec<Counters>)]) -> Sample {
        lbs.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn traffic_sums_growth_over_every_balancer_and_survives_a_reload() {
        let start = at(&[
            (
                "lb-01",
                vec![c("web-01", 100, 1, 5), c("web-02", 100, 0, 5)],
            ),
            ("lb-02", vec![c("web-01", 50, 0, 5), c("web-02", 50, 0, 5)]),
        ]);
        let now = at(&[
            (
                "lb-01",
                vec![c("web-01", 150, 11, 9), c("web-02", 160, 0, 4)],
            ),
            // lb-02 reloaded: its counters restarted from zero.
            ("lb-02", vec![c("web-01", 30, 5, 12), c("web-02", 20, 0, 4)]),
        ]);
        let canary = traffic(&start, &now, |s| s == "web-01");
        assert_eq!(canary.requests, 50 + 30);
        assert_eq!(canary.http_5xx, 10 + 5);
        assert_eq!(canary.rtime_ms, Some(12));
        let old = traffic(&start, &now, |s| s != "web-01");
        assert_eq!((old.requests, old.errors()), (60 + 20, 0));
        let idle = traffic(&now, &now, |_| true);
        assert_eq!((idle.requests, idle.rtime_ms), (0, None));
        assert_eq!(idle.rate(), 0.0);
    }

    #[test]
    fn the_canary_fails_only_beyond_the_old_release_plus_the_limit() {
        let limits = Rollout::default(); // 1%
        let t = |requests, http_5xx| Traffic {
            requests,
            http_5xx,
            ..Traffic::default()
        };
        // 1 request in 5 fails: 20% against 0%.
        let broken = judge(&t(100, 20), &t(100, 0), &limits);
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].starts_with("error rate 20.0% (20 of 100 requests) against 0.0% (0 of 100)"),
            "{broken:?}"
        );
        // Exactly at the limit passes; the old servers failing as much passes.
        assert!(judge(&t(100, 1), &t(100, 0), &limits).is_empty());
        assert!(judge(&t(100, 5), &t(100, 5), &limits).is_empty());
        assert!(!judge(&t(100, 2), &t(100, 0), &limits).is_empty());
        // Response time, when limited.
        let slow = Traffic {
            rtime_ms: Some(900),
            ..t(100, 0)
        };
        assert!(judge(&slow, &t(100, 0), &limits).is_empty());
        let limits = Rollout {
            max_response_ms: Some(500),
            ..Rollout::default()
        };
        assert_eq!(
            judge(&slow, &t(100, 0), &limits),
            ["average response time 900 ms (old release: no requests); limit 500 ms"]
        );
    }

    #[test]
    fn no_traffic_goes_on_only_when_told_to() {
        let report = |verdict| Report {
            verdict,
            canaries: vec!["web-01".into()],
            others: vec!["web-02".into()],
            balancers: vec!["lb-01".into()],
            window_s: 30.0,
            samples: 10,
            canary: Traffic::default(),
            old: Traffic::default(),
            broken: Vec::new(),
        };
        let halt = Rollout::default();
        let proceed = Rollout {
            on_no_traffic: NoTraffic::Proceed,
            ..Rollout::default()
        };
        assert!(!goes_on(&report(Verdict::NoTraffic), &halt));
        assert!(goes_on(&report(Verdict::NoTraffic), &proceed));
        assert!(goes_on(&report(Verdict::Pass), &halt));
        assert!(!goes_on(&report(Verdict::Fail), &proceed));
        let text = report(Verdict::NoTraffic).summary();
        assert!(
            text.starts_with("canary not judged: no request reached web-01 in the window"),
            "{text}"
        );
        assert!(text.contains("over 30.0 s at lb-01"), "{text}");
    }
}
