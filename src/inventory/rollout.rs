//! The inventory's `rollout:` section: how a release reaches the web servers (a canary
//! stage judged by the load balancers' own counters), as written and as validated.
//!
//! ```yaml
//! rollout:
//!   canary: 1              # web servers that get the release first (fewer than all)
//!   watch: 30s             # how long their live traffic is judged (1s .. 10m)
//!   max_error_rate: 1%     # canary's error rate above the old servers' (points)
//!   max_response_ms: 800   # optional: canary's average response time (HAProxy rtime)
//!   max_p95_ms: 300        # optional: canary's 95th percentile response time (HAProxy %Tr)
//!   on_no_traffic: halt    # halt (default) or proceed when the canary got no request
//! ```
//!
//! No section: no canary stage (every web server in turn, as before); `apply --canary N`
//! turns it on with these defaults, `--no-canary` turns it off.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validation::Validator;

#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    canary: Option<u32>,
    watch: Option<String>,
    max_error_rate: Option<serde_yaml::Value>,
    max_response_ms: Option<u64>,
    on_no_traffic: Option<NoTraffic>,
    /// Checked by [`parse_p95`] (an integer, not a string such as "300ms").
    max_p95_ms: Option<serde_yaml::Value>,
}

/// What a canary window without a single request to the canary leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoTraffic {
    /// Stop, restoring the canary: nothing proved the release serves.
    #[default]
    Halt,
    /// Go on with the other web servers, saying the canary was not judged.
    Proceed,
}

/// The validated section (see the module doc for its meaning and defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollout {
    pub canary: usize,
    #[serde(with = "secs")]
    pub watch: Duration,
    /// A fraction (1% is 0.01).
    pub max_error_rate: f64,
    pub max_response_ms: Option<u64>,
    /// The canary's 95th percentile response time limit, ms: the load balancers then
    /// keep a log of every request's response time (haproxy.cfg's ring) to compute it.
    pub max_p95_ms: Option<u64>,
    pub on_no_traffic: NoTraffic,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            canary: 1,
            watch: Duration::from_secs(30),
            max_error_rate: 0.01,
            max_response_ms: None,
            max_p95_ms: None,
            on_no_traffic: NoTraffic::Halt,
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// "30s", "2m", "1500ms" as a duration between 1 s and 10 min.
pub fn parse_watch(s: &str) -> Option<Duration> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok().filter(|_| !digits.starts_with('+'))?;
    let d = match &s[digits.len()..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (Duration::from_secs(1)..=Duration::from_secs(600))
        .contains(&d)
        .then_some(d)
}

/// "1%", "0.5%" as a fraction in [0, 1].
pub fn parse_rate(v: &serde_yaml::Value) -> Option<f64> {
    let s = v.as_str()?.strip_suffix('%')?;
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.matches('.').count() <= 1;
    let pct: f64 = s.parse().ok().filter(|_| plain)?;
    (0.0..=100.0).contains(&pct).then_some(pct / 100.0)
}

/// The bounds of `max_p95_ms`, ms (up to the longest watch).
pub const P95_MS: std::ops::RangeInclusive<u64> = 1..=600_000;

/// `max_p95_ms`: a whole number of milliseconds within [`P95_MS`].
pub fn parse_p95(v: &serde_yaml::Value) -> Option<u64> {
    v.as_u64().filter(|ms| P95_MS.contains(ms))
}

impl Validator {
    /// The section, checked against the number of web servers (a canary needs at least
    /// one server left on the old release to be compared with).
    pub(super) fn rollout(&mut self, raw: Option<&RawRollout>, web: usize) -> Option<Rollout> {
        let raw = raw?;
        let mut r = Rollout::default();
        if let Some(n) = raw.canary {
            r.canary = n as usize;
        }
        self.check(r.canary >= 1, "rollout.canary", || {
            "must be at least 1 (to deploy without a canary stage, leave `rollout:` out or pass --no-canary)".into()
        });
        self.check(r.canary < web, "rollout.canary", || {
            format!(
                "{} canary server(s) of {web} web server(s): at least one must stay on the old release to compare with",
                r.canary
            )
        });
        if let Some(w) = &raw.watch {
            match parse_watch(w) {
                Some(d) => r.watch = d,
                None => self.err(
                    "rollout.watch",
                    format!("invalid watch {w:?} (a duration from 1s to 10m, e.g. 30s, 2m)"),
                ),
            }
        }
        if let Some(v) = &raw.max_error_rate {
            match parse_rate(v) {
                Some(f) => r.max_error_rate = f,
                None => self.err(
                    "rollout.max_error_rate",
                    "a percentage from 0% to 100%, e.g. 1% or 0.5%",
                ),
            }
        }
        if let Some(ms) = raw.max_response_ms {
            self.check(ms >= 1, "rollout.max_response_ms", || {
                "must be at least 1".into()
            });
            r.max_response_ms = Some(ms);
        }
        if let Some(v) = &raw.max_p95_ms {
            r.max_p95_ms = parse_p95(v);
            self.check(r.max_p95_ms.is_some(), "rollout.max_p95_ms", || {
                format!(
                    "a whole number of milliseconds from {} to {}, e.g. 300",
                    P95_MS.start(),
                    P95_MS.end()
                )
            });
        }
        r.on_no_traffic = raw.on_no_traffic.unwrap_or_default();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_and_rate_grammar() {
        assert_eq!(parse_watch("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_watch("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_watch("1500ms"), Some(Duration::from_millis(1500)));
        for bad in [
            "", "30", "0s", "11m", "+5s", "5 s", "1h", "-1s", "999ms", "5S",
        ] {
            assert_eq!(parse_watch(bad), None, "{bad:?}");
        }
        let s = |x: &str| serde_yaml::Value::String(x.into());
        assert_eq!(parse_rate(&s("1%")), Some(0.01));
        assert_eq!(parse_rate(&s("0.5%")), Some(0.005));
        assert_eq!(parse_rate(&s("100%")), Some(1.0));
        for bad in [
            "1", "%", "101%", "-1%", "1.2.3%", "1e1%", " 1%", "NaN%", "inf%",
        ] {
            assert_eq!(parse_rate(&s(bad)), None, "{bad:?}");
        }
        assert_eq!(parse_rate(&serde_yaml::Value::from(0.01)), None);
        let y = |x: &str| serde_yaml::from_str::<serde_yaml::Value>(x).unwrap();
        assert_eq!(parse_p95(&y("300")), Some(300));
        assert_eq!(parse_p95(&y("1")), Some(1));
        assert_eq!(parse_p95(&y("600000")), Some(600_000));
        for bad in [
            "0", "-5", "600001", "1.5", "'300'", "300ms", "~", "[300]", "1e3",
        ] {
            assert_eq!(parse_p95(&y(bad)), None, "{bad:?}");
        }
    }
}
