//! End-to-end tests of canary rollouts (issue 22) on the lab, under a bounded request
//! loop at the load balancer (20 requests/s, bounded in count and time, lab addresses
//! only): a release that fails 1 request in 5 stops at the canary and is restored, a
//! good one passes, `--limit web-01` drains it at the load balancer, and a window
//! without traffic halts as configured; the same for web-server config changes (an
//! nginx site template that fails 1 request in 5 is restored on the canary alone, a good
//! config change reaches both). They need Docker (see tests/lab/main.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;

lab_tests!(
    a_release_failing_one_request_in_five_stops_at_the_canary_and_is_restored,
    a_good_release_passes_the_canary_and_fails_no_request,
    apply_limit_web_01_drains_it_at_the_load_balancer_and_fails_no_request,
    no_traffic_with_on_no_traffic_halt_stops_and_changes_nothing,
    a_config_change_failing_one_request_in_five_stops_at_the_canary_and_is_restored,
    a_good_config_change_passes_the_canary_and_fails_no_request,
    a_release_answering_in_300_ms_stops_at_the_canary_on_its_p95,
    a_failed_canary_gets_back_both_its_release_and_its_config,
);

static FIRST_APPLY: OnceLock<std::process::Output> = OnceLock::new();

fn setup() {
    lab();
    let first = FIRST_APPLY.get_or_init(|| cli(&["apply", &inv()]));
    assert_eq!(first.status.code(), Some(0), "first apply: {}", text(first));
}

fn inv() -> String {
    lab_inventory().display().to_string()
}

/// The lab's inventory with a copy of the example app (`edit` applied to the copy's
/// directory) and `rollout` appended; returns its path.
fn variant(tag: &str, edit: impl Fn(&std::path::Path), rollout: &str) -> String {
    let dir = example_app_copy(&format!("canary-{tag}"));
    edit(&dir);
    let path = lab_variant(&format!("inventory-canary-{tag}"), |t| {
        format!(
            "{}{rollout}",
            t.replace(
                "source: ../examples/app",
                &format!("source: app-canary-{tag}")
            )
        )
    });
    path.display().to_string()
}

/// A release whose `/` answers 500 for 1 request in 5 (per worker) while /health
/// stays 200.
fn one_in_five_fails(dir: &std::path::Path) {
    let app = dir.join("app/foobar_app.py");
    let src = std::fs::read_to_string(&app).unwrap();
    let bad = src.replacen(
        "def index(cfg, environ):\n",
        "_SEEN = [0]\n\n\ndef index(cfg, environ):\n    _SEEN[0] += 1\n    if _SEEN[0] % 5 == 0:\n        raise RuntimeError(\"canary test: 1 request in 5 fails\")\n",
        1,
    );
    assert_ne!(src, bad, "the app's index() was found");
    std::fs::write(app, bad).unwrap();
}

/// A release whose `/` answers after 300 ms (every request, /health as fast as before).
fn answers_in_300_ms(dir: &std::path::Path) {
    let app = dir.join("app/foobar_app.py");
    let src = std::fs::read_to_string(&app).unwrap();
    let slow = src.replacen(
        "def index(cfg, environ):\n",
        "def index(cfg, environ):\n    time.sleep(0.3)  # canary test: a slow release\n",
        1,
    );
    assert_ne!(src, slow, "the app's index() was found");
    std::fs::write(app, slow).unwrap();
}

fn unchanged(_: &std::path::Path) {}

fn served_release(addr: &str) -> String {
    http_get(addr, "/health")
        .map(|r| r.header("X-Release").unwrap_or("").to_string())
        .unwrap_or_default()
}

/// One request of the loop: when it started, and its status and server (or error).
#[derive(Debug, Clone)]
struct Hit {
    at: Duration,
    status: u16,
    server: String,
    release: String,
    error: Option<String>,
}

impl Hit {
    fn failed(&self) -> bool {
        self.error.is_some() || self.status != 200
    }
}

/// GET / at the load balancer at 20 requests/s on new connections until `stop` is set,
/// at most `limit` long and 20 * limit requests.
fn spawn_loop(limit: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<Hit>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let t0 = Instant::now();
        let max = (limit.as_secs() * 20) as usize;
        let mut hits = Vec::new();
        while !flag.load(Ordering::SeqCst) && t0.elapsed() < limit && hits.len() < max {
            let at = t0.elapsed();
            hits.push(match http_get(lb(), "/") {
                Ok(r) => Hit {
                    at,
                    status: r.status,
                    server: r.header("X-Served-By").unwrap_or("").to_string(),
                    release: r.header("X-Release").unwrap_or("").to_string(),
                    error: None,
                },
                Err(e) => Hit {
                    at,
                    status: 0,
                    server: String::new(),
                    release: String::new(),
                    error: Some(e.to_string()),
                },
            });
            let next = Duration::from_millis(50) * hits.len() as u32;
            if let Some(wait) = next.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        hits
    });
    (stop, handle)
}

/// The run's `canary-verdict` event.
fn verdict_of<'a>(
    out: &std::process::Output,
    evs: &'a [serde_json::Value],
) -> &'a serde_json::Value {
    evs.iter()
        .find(|e| e["event"] == "canary-verdict")
        .unwrap_or_else(|| panic!("a verdict event: {}", text(out)))
}

/// After a stopped canary every request succeeds again, and the loop's failed requests
/// (at least one) are all 500s of web-01 running release `bad_id`: returns them.
fn only_the_canarys_500s<'a>(hits: &'a [Hit], bad_id: &str) -> Vec<&'a Hit> {
    assert!(every_request_succeeds(), "every request succeeds again");
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.failed()).collect();
    assert!(!failed.is_empty(), "the canary failed some requests");
    for h in &failed {
        assert!(
            h.status == 500 && h.server == "web-01" && h.release == bad_id,
            "only the canary's 500s fail: {h:?}"
        );
    }
    failed
}

/// Runs the CLI under the loop (started 2 s before, stopped 2 s after); returns its
/// output and every request of the loop.
fn under_load(args: &[&str]) -> (std::process::Output, Vec<Hit>) {
    let (stop, handle) = spawn_loop(Duration::from_secs(150));
    std::thread::sleep(Duration::from_secs(2));
    let out = cli(args);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let hits = handle.join().unwrap();
    assert!(hits.len() > 60, "the loop ran ({} requests)", hits.len());
    (out, hits)
}

/// No request of the loop failed; else the failures, the run's output and the last
/// lines of the error log of nginx on each web server that answered one (which says
/// whether its application refused, reset or timed out, i.e. in which phase).
fn assert_none_failed(hits: &[Hit], out: &std::process::Output) {
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.failed()).collect();
    if failed.is_empty() {
        return;
    }
    let mut servers: Vec<&str> = failed.iter().map(|h| h.server.as_str()).collect();
    servers.sort_unstable();
    servers.dedup();
    let logs: Vec<String> = (servers.iter().filter(|s| !s.is_empty()))
        .map(|s| {
            let log = exec_raw(s, &["tail", "-n", "8", NGINX_ERROR_LOG]);
            format!("{s}: {NGINX_ERROR_LOG}:\n{}", text(&log))
        })
        .collect();
    panic!(
        "{} failed (the run started 2 s into the loop): {failed:?}\n{}\nthe run:\n{}",
        failed.len(),
        logs.join("\n"),
        text(out)
    );
}

fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn every_request_succeeds() -> bool {
    (0..20).all(|_| http_get(lb(), "/").is_ok_and(|r| r.status == 200))
}

/// Acceptance 1: the run stops after the canary with exit 1 naming the server and the
/// error rate; web-02 never ran that release; afterwards every request succeeds; the
/// failed requests are the canary's, inside the window, as many as reported.
fn a_release_failing_one_request_in_five_stops_at_the_canary_and_is_restored() {
    setup();
    cli(&["apply", &inv()]);
    let v1 = served_release(web1());
    assert_eq!(v1, served_release(web2()));
    let bad = variant(
        "bad",
        one_in_five_fails,
        "rollout:\n  canary: 1\n  watch: 20s\n  max_error_rate: 1%\n",
    );
    let (out, hits) = under_load(&["apply", "--json", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canary failed: error rate"), "{stderr}");
    assert!(stderr.contains("web-01: "), "names the canary: {stderr}");
    assert!(stderr.contains("web-02 never switched"), "{stderr}");
    let evs = events(&out);
    let verdict = verdict_of(&out, &evs);
    assert_eq!(verdict["report"]["verdict"], "fail", "{verdict:#}");
    let samples = evs.iter().filter(|e| e["event"] == "canary-sample").count();
    assert!(samples >= 1, "one event per sample: {}", text(&out));
    let reported = verdict["report"]["canary"]["http_5xx"].as_u64().unwrap() as usize;
    let bad_id = verdict["release"].as_str().unwrap().to_string();
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "release" && e["host"] == "web-02"),
        "web-02 never switched: {}",
        text(&out)
    );
    // web-02 never ran it (the release is uploaded beside, never current); web-01 is back.
    assert_eq!(served_release(web2()), v1);
    assert_eq!(served_release(web1()), v1);
    let failed = only_the_canarys_500s(&hits, &bad_id);
    // Those the load balancer counted in the window, give or take the few it answered
    // between its return to the pool and the first sample, or after the last one.
    assert!(
        failed.len() <= reported + 3 && reported <= failed.len(),
        "{} failed requests, {reported} reported",
        failed.len()
    );
    eprintln!(
        "acceptance 1: {} requests, {} failed ({:?} .. {:?} into the loop), {reported} counted in the window",
        hits.len(),
        failed.len(),
        failed[0].at,
        failed[failed.len() - 1].at
    );
    apply_ok(&inv(), &[]);
}

/// Acceptance 2: the canary passes, the rollout completes, no request fails, and the
/// time the watch added is printed.
fn a_good_release_passes_the_canary_and_fails_no_request() {
    setup();
    apply_ok(&inv(), &[]);
    let good = variant(
        "good",
        unchanged,
        "rollout:\n  canary: 1\n  watch: 10s\n  max_error_rate: 1%\n",
    );
    let (out, hits) = under_load(&["apply", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canary passed: web-01: "), "{stderr}");
    assert!(stderr.contains("the watch added 1"), "{stderr}");
    assert_none_failed(&hits, &out);
    let v2 = served_release(web1());
    assert_eq!(served_release(web2()), v2, "the rollout completed");
    assert!(hits.iter().any(|h| h.release == v2 && h.server == "web-02"));
    apply_ok(&inv(), &[]);
}

/// Acceptance 3: `apply --limit web-01` with an application change, under the loop:
/// web-01 is drained at the load balancer (outside the limit) first, no request fails.
fn apply_limit_web_01_drains_it_at_the_load_balancer_and_fails_no_request() {
    setup();
    apply_ok(&inv(), &[]);
    let v1 = served_release(web2());
    // A canary covering every web server that changes: refused on the command line
    // (exit 64, before any change), skipped from the inventory saying why.
    let v3 = variant("limit", unchanged, "rollout:\n  canary: 1\n  watch: 4s\n");
    let refused = cli(&["apply", "--canary", "1", "--limit", "web-01", &v3]);
    assert_eq!(refused.status.code(), Some(64), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "--canary 1 covers every web server that changes in this run (1 of them: web-01)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("pass --no-canary"), "{stderr}");
    assert_eq!(served_release(web1()), v1, "refused before any change");
    let (out, hits) = under_load(&["apply", "-v", "--limit", "web-01", &v3]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("the canary stage is skipped: rollout.canary 1 covers every web server that changes in this run (1 of them: web-01)").count(),
        1,
        "one line says why: {stderr}"
    );
    assert!(stderr.contains("lb-01: web-01 -> drain"), "{stderr}");
    assert_none_failed(&hits, &out);
    assert_ne!(served_release(web1()), v1, "web-01 switched");
    assert_eq!(served_release(web2()), v1, "web-02 untouched");
    apply_ok(&inv(), &[]);
}

/// Acceptance 4: no traffic at all and `on_no_traffic: halt`: the run stops with a clear
/// message and nothing changes beyond the canary's restore.
fn no_traffic_with_on_no_traffic_halt_stops_and_changes_nothing() {
    setup();
    apply_ok(&inv(), &[]);
    let v1 = served_release(web1());
    let files = managed_hashes();
    let quiet = variant(
        "quiet",
        unchanged,
        "rollout:\n  canary: 1\n  watch: 4s\n  on_no_traffic: halt\n",
    );
    let out = cli(&["apply", &quiet]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canary not judged: no request reached web-01 in the window"),
        "{stderr}"
    );
    assert_eq!(served_release(web1()), v1, "the canary is restored");
    assert_eq!(served_release(web2()), v1);
    assert_eq!(managed_hashes(), files, "no managed file changed");
    let status = cli(&["status", "--json", &quiet]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["canary"]["report"]["verdict"], "no-traffic", "{doc:#}");
    apply_ok(&inv(), &[]);
}

/// The nginx site config of the lab's web servers.
const SITE: &str = "/etc/nginx/sites-foobar/www.foobar.com.conf";
/// Where nginx on the web servers logs what went wrong with a request (the site's log).
const NGINX_ERROR_LOG: &str = "/var/log/nginx/www.foobar.com.error.log";

/// A `--templates` directory whose nginx site template answers `/` with a 500 for 1
/// request in 5 (nginx's own random split) while /health stays 200, and marks every
/// response it serves with `X-Canary-Test: bad-config` (to tell which config runs).
fn bad_site_templates() -> String {
    let dir = state_dir().join("templates-canary-bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(root().join("templates/nginx-site.conf")).unwrap();
    let split = "split_clients \"${request_id}\" $canary_test_fails {\n    20%     1;\n    *       0;\n}\n\nupstream foobar_app {\n";
    let bad = src
        .replacen("upstream foobar_app {\n", split, 1)
        .replacen(
            "    add_header X-Served-By \"{{ host.name }}\" always;\n",
            "    add_header X-Served-By \"{{ host.name }}\" always;\n    add_header X-Canary-Test \"bad-config\" always;\n",
            1,
        )
        .replacen(
            "    location / {\n",
            "    location / {\n        if ($canary_test_fails) {\n            return 500;\n        }\n",
            1,
        );
    assert_eq!(bad.matches("canary_test_fails").count(), 2, "{bad}");
    assert!(bad.contains("X-Canary-Test"));
    std::fs::write(dir.join("nginx-site.conf"), bad).unwrap();
    dir.display().to_string()
}

/// Issue 22 for config changes, acceptance 1: an nginx config change that fails 1
/// request in 5 on `/` (health stays 200) stops at the canary with exit 1, naming the
/// server and the rate; web-02's config is never touched; web-01's is the old one again
/// and nginx runs it; every request succeeds afterwards.
fn a_config_change_failing_one_request_in_five_stops_at_the_canary_and_is_restored() {
    setup();
    apply_ok(&inv(), &[]);
    let (site1, site2) = (remote_sha("web-01", SITE), remote_sha("web-02", SITE));
    let release = served_release(web1());
    let templates = bad_site_templates();
    let bad = lab_variant("inventory-canary-config-bad", |t| {
        format!("{t}rollout:\n  canary: 1\n  watch: 20s\n  max_error_rate: 1%\n")
    });
    let bad = bad.display().to_string();
    let args = ["apply", "--json", "--templates", &templates, &bad];
    let (out, hits) = under_load(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canary failed: error rate"), "{stderr}");
    assert!(stderr.contains("web-01: "), "names the canary: {stderr}");
    assert!(stderr.contains("deploying files (nginx)"), "{stderr}");
    assert!(stderr.contains("web-02 never changed"), "{stderr}");
    let evs = events(&out);
    let verdict = verdict_of(&out, &evs);
    assert_eq!(verdict["report"]["verdict"], "fail", "{verdict:#}");
    assert_eq!(verdict["change"], "files (nginx)", "{verdict:#}");
    let reported = verdict["report"]["canary"]["http_5xx"].as_u64().unwrap() as usize;
    let requests = verdict["report"]["canary"]["requests"].as_u64().unwrap() as usize;
    // The watch may stop early (a failed request among 20 or more): the rate it judged is
    // above the 1% limit, not necessarily near the template's 1 in 5.
    assert!(
        reported >= 1 && reported * 100 > requests,
        "above the 1% limit: {verdict:#}"
    );
    let rate = format!("{:.1}%", reported as f64 * 100.0 / requests as f64);
    assert!(
        stderr.contains(&format!("error rate {rate}")),
        "{rate}: {stderr}"
    );
    assert!(
        !evs.iter()
            .any(|e| e["event"] == "file-changed" && e["host"] == "web-02"),
        "web-02 never changed: {}",
        text(&out)
    );
    // web-02 never had the config; web-01 has the old one again, and nginx runs it:
    // no response carries the bad config's header, none fails.
    assert_eq!(
        remote_sha("web-02", SITE),
        site2,
        "web-02's config untouched"
    );
    assert_eq!(
        remote_sha("web-01", SITE),
        site1,
        "web-01's config restored"
    );
    for _ in 0..20 {
        let r = http_get(web1(), "/").expect("web-01 answers");
        assert_eq!(r.status, 200, "web-01 serves the old config");
        assert_eq!(
            r.header("X-Canary-Test"),
            None,
            "nginx runs the restored config"
        );
    }
    assert_eq!(served_release(web1()), release, "the release never changed");
    assert!(every_request_succeeds(), "every request succeeds again");
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.failed()).collect();
    assert!(!failed.is_empty(), "the canary failed some requests");
    for h in &failed {
        assert!(
            h.status == 500 && h.server == "web-01",
            "only the canary's 500s fail: {h:?}"
        );
    }
    assert!(
        failed.len() <= reported + 3 && reported <= failed.len(),
        "{} failed requests, {reported} reported",
        failed.len()
    );
    eprintln!(
        "config canary, bad: {} requests, {} failed ({:?} .. {:?} into the loop), {reported} counted in the window",
        hits.len(),
        failed.len(),
        failed[0].at,
        failed[failed.len() - 1].at
    );
    let status = cli(&["status", "--json", &bad]);
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["canary"]["report"]["verdict"], "fail", "{doc:#}");
    apply_ok(&inv(), &[]);
}

/// Issue 22 for config changes, acceptance 2: a good config change (the inventory's
/// `nginx.client_max_body_size`, an nginx reload) passes the canary, then reaches the
/// other server; no request fails.
fn a_good_config_change_passes_the_canary_and_fails_no_request() {
    setup();
    apply_ok(&inv(), &[]);
    let good = lab_variant("inventory-canary-config-good", |t| {
        format!("{t}nginx:\n  client_max_body_size: 11m\nrollout:\n  canary: 1\n  watch: 10s\n")
    });
    let good = good.display().to_string();
    let (out, hits) = under_load(&["apply", "--json", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let evs = events(&out);
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| {
        evs.iter()
            .position(f)
            .unwrap_or_else(|| panic!("an event: {}", text(&out)))
    };
    let verdict = at(&|e| e["event"] == "canary-verdict");
    assert_eq!(
        evs[verdict]["report"]["verdict"], "pass",
        "{:#}",
        evs[verdict]
    );
    let web01 = at(&|e| e["event"] == "file-changed" && e["host"] == "web-01");
    let web02 = at(&|e| e["event"] == "file-changed" && e["host"] == "web-02");
    assert!(
        web01 < verdict && verdict < web02,
        "canary first: {}",
        text(&out)
    );
    for web in ["web-01", "web-02"] {
        let conf = exec(web, &["cat", SITE]);
        assert!(conf.contains("client_max_body_size 11m;"), "{web}: {conf}");
    }
    assert_none_failed(&hits, &out);
    eprintln!(
        "config canary, good: {} requests, none failed; the watch: {:.1} s",
        hits.len(),
        evs[verdict]["report"]["window_s"].as_f64().unwrap_or(0.0)
    );
    apply_ok(&inv(), &[]);
}

/// A p95 limit (`max_p95_ms: 150`) and a release whose `/` takes 300 ms, under the loop:
/// haproxy.cfg gains its request log ring, the run stops after the canary with exit 1
/// naming the p95 (the canary's and the old servers', also in the `--json` events),
/// web-02 never ran the release, and no request failed (slow is not failed).
fn a_release_answering_in_300_ms_stops_at_the_canary_on_its_p95() {
    setup();
    apply_ok(&inv(), &[]);
    let v1 = served_release(web1());
    let slow = variant(
        "slow",
        answers_in_300_ms,
        "rollout:\n  canary: 1\n  watch: 15s\n  max_error_rate: 1%\n  max_p95_ms: 150\n",
    );
    let (out, hits) = under_load(&["apply", "--json", &slow]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canary failed: p95 response time "),
        "names the p95: {stderr}"
    );
    assert!(stderr.contains("limit 150 ms"), "{stderr}");
    assert!(stderr.contains("web-02 never switched"), "{stderr}");
    let evs = events(&out);
    let verdict = verdict_of(&out, &evs);
    let report = &verdict["report"];
    assert_eq!(report["verdict"], "fail", "{verdict:#}");
    let canary_p95 = report["canary"]["p95_ms"].as_u64().unwrap();
    let old_p95 = &report["old"]["p95_ms"];
    assert!(
        report["old"]["timed"].is_u64(),
        "the old servers are timed: {report:#}"
    );
    let timed = report["canary"]["timed"].as_u64().unwrap();
    // At least the 300 ms the release sleeps; the old servers' p95 is reported (their
    // value depends on how busy the machine is: the limit is absolute, not relative).
    assert!((300..5000).contains(&canary_p95), "{report:#}");
    assert!(timed >= 20, "{report:#}");
    // Every sample event carries both p95 fields; the last equals the verdict's.
    let samples: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["event"] == "canary-sample")
        .collect();
    assert!(!samples.is_empty(), "{}", text(&out));
    assert!(samples.iter().all(|s| s["canary"].get("p95_ms").is_some()
        && s["old"].get("timed").is_some_and(|t| t.is_u64())));
    assert_eq!(samples.last().unwrap()["canary"]["p95_ms"], canary_p95);
    let skipped: Vec<u64> = samples
        .iter()
        .map(|s| s["skipped_log_lines"].as_u64().unwrap())
        .collect();
    eprintln!("  request log lines skipped per sample: {skipped:?}");
    assert_eq!(served_release(web1()), v1, "the canary is restored");
    assert_eq!(served_release(web2()), v1, "web-02 never ran it");
    assert_none_failed(&hits, &out);
    assert!(every_request_succeeds());
    eprintln!(
        "p95: {} requests in the loop, canary p95 {canary_p95} ms over {timed} requests, old p95 {old_p95} ms, {} samples",
        hits.len(),
        samples.len()
    );
    for line in stderr
        .lines()
        .filter(|l| l.contains("canary failed") || l.contains("p95 "))
    {
        eprintln!("  {line}");
    }
    apply_ok(&inv(), &[]);
}

/// One run changes both the release (one that fails 1 request in 5) and the nginx
/// config (a good one): the canary gets both before the watch, and on the failure both
/// go back on it; web-02 never gets either.
fn a_failed_canary_gets_back_both_its_release_and_its_config() {
    setup();
    apply_ok(&inv(), &[]);
    let (site1, site2) = (remote_sha("web-01", SITE), remote_sha("web-02", SITE));
    let v1 = served_release(web1());
    let both = variant(
        "both",
        one_in_five_fails,
        "nginx:\n  client_max_body_size: 11m\nrollout:\n  canary: 1\n  watch: 20s\n",
    );
    let (out, hits) = under_load(&["apply", "--json", &both]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canary failed: error rate"), "{stderr}");
    assert!(stderr.contains("and files (nginx)"), "{stderr}");
    assert!(stderr.contains("web-01 is back on release"), "{stderr}");
    assert!(
        stderr.contains("Restored the previous files on web-01"),
        "{stderr}"
    );
    assert!(stderr.contains("web-02 never changed"), "{stderr}");
    assert!(stderr.contains("web-02 never switched"), "{stderr}");
    let evs = events(&out);
    let verdict = verdict_of(&out, &evs);
    let bad_id = verdict["release"].as_str().unwrap().to_string();
    // The canary ran both when watched: its file changed and it switched before.
    let web01_file = evs
        .iter()
        .position(|e| e["event"] == "file-changed" && e["host"] == "web-01");
    let web01_release = evs
        .iter()
        .position(|e| e["event"] == "release" && e["host"] == "web-01");
    let at = evs.iter().position(|e| e["event"] == "canary-verdict");
    assert!(
        web01_file < at && web01_release < at && web01_file.is_some() && web01_release.is_some()
    );
    assert_eq!(
        remote_sha("web-01", SITE),
        site1,
        "web-01's config restored"
    );
    assert_eq!(
        remote_sha("web-02", SITE),
        site2,
        "web-02's config untouched"
    );
    assert_eq!(served_release(web1()), v1, "web-01 is back on its release");
    assert_eq!(served_release(web2()), v1, "web-02 never switched");
    let failed = only_the_canarys_500s(&hits, &bad_id);
    eprintln!(
        "release and config canary: {} requests, {} failed",
        hits.len(),
        failed.len()
    );
    apply_ok(&inv(), &[]);
}
