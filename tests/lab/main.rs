//! The lab tier: every end-to-end test against the Docker lab, in one binary with its own
//! harness (libtest-mimic), so that the lab comes up once per run and the tests, which
//! share it, run one after the other (by name: module, then test, as the separate
//! binaries did). One module per area; a test is a plain `fn` listed in its module's
//! `lab_tests!` (an unlisted one is dead code, which the build reports).
//!
//! `LAB_OS=debian13 cargo test --test lab [-- FILTER]` runs it (`LAB_OS=debian12` for
//! Debian 12 hosts, `LAB_NAME` for another lab). Without `LAB_OS` (a plain `cargo test`:
//! the fast tier) or without a working Docker daemon it runs nothing and says so on its
//! last line; with `LAB_OS` set under `CI=true`, a missing Docker daemon is a failure.

/// A lab test: its name in its module, and the function.
type LabTest = (&'static str, fn());

/// Declares a module's tests: `pub const TESTS`, each with its name.
macro_rules! lab_tests {
    ($($name:ident),* $(,)?) => {
        pub const TESTS: &[crate::LabTest] = &[$((stringify!($name), $name)),*];
    };
}

mod common;
#[path = "../support/overrides.rs"]
mod overrides;

mod apply;
mod canary;
mod day2;
mod failover;
mod firewall;
mod live;
mod monitoring;
mod rotation;
mod stack;
mod tls;
mod topology;

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use libtest_mimic::{Arguments, Trial};

/// Every module's tests, named `MODULE::TEST` (what a filter matches).
fn trials() -> Vec<Trial> {
    let modules: &[(&str, &[LabTest])] = &[
        ("apply", apply::TESTS),
        ("canary", canary::TESTS),
        ("day2", day2::TESTS),
        ("failover", failover::TESTS),
        ("firewall", firewall::TESTS),
        ("live", live::TESTS),
        ("monitoring", monitoring::TESTS),
        ("rotation", rotation::TESTS),
        ("stack", stack::TESTS),
        ("tls", tls::TESTS),
        ("topology", topology::TESTS),
    ];
    let mut tests: Vec<(String, fn())> = modules
        .iter()
        .flat_map(|(m, tests)| tests.iter().map(move |(t, f)| (format!("{m}::{t}"), *f)))
        .collect();
    tests.sort_by(|a, b| a.0.cmp(&b.0));
    tests
        .into_iter()
        .map(|(name, f)| {
            let module = name.split("::").next().unwrap_or_default().to_string();
            Trial::test(name, move || {
                enter_module(&module);
                f();
                Ok(())
            })
        })
        .collect()
}

/// A module's first test starts without the inventory variants other modules left in
/// the state directory, as when each module was a binary of its own on a fresh lab (two
/// variants with the same text make a plan's inventory ambiguous, for one).
fn enter_module(module: &str) {
    static CURRENT: Mutex<String> = Mutex::new(String::new());
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if *current != module {
        common::forget_variants();
        *current = module.to_string();
    }
}

/// Why the lab tier cannot run here, if it cannot (`LAB_OS` unset, or no Docker).
fn reason_to_skip() -> Option<String> {
    if std::env::var("LAB_OS").map_or(true, |v| v.is_empty()) {
        return Some(
            "LAB_OS is not set (plain `cargo test` runs the fast tier only); \
             run `LAB_OS=debian13 cargo test --test lab` (needs Docker) or `bash .ci/run`"
                .into(),
        );
    }
    if !common::docker_works() {
        return Some(
            "no working Docker daemon (docker info failed); \
             run `bash .ci/run` or start Docker"
                .into(),
        );
    }
    None
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // The tests share one lab: one at a time.
    args.test_threads = Some(1);
    let trials = trials();
    if args.list {
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let selected = trials
        .iter()
        .filter(|t| !args.is_filtered_out(t) && !args.is_ignored(t))
        .count();
    if selected == 0 {
        return libtest_mimic::run(&args, trials).exit_code();
    }
    if let Some(why) = reason_to_skip() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        // Asked for the lab (LAB_OS set) under CI, not running it is a failure.
        let fail = ci && std::env::var("LAB_OS").is_ok_and(|v| !v.is_empty());
        eprintln!(
            "\nlab tier {}: {selected} test(s) not run: {why}",
            if fail { "FAILED" } else { "SKIPPED" }
        );
        return if fail {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let t0 = Instant::now();
    if std::panic::catch_unwind(common::lab).is_err() {
        eprintln!("\nlab tier FAILED: the lab did not come up (see above)");
        return ExitCode::FAILURE;
    }
    let conclusion = libtest_mimic::run(&args, trials);
    eprintln!(
        "\nlab tier on LAB_OS={} LAB_NAME={}: {} passed, {} failed in {} s (lab up included)",
        common::lab_os(),
        common::lab_name(),
        conclusion.num_passed,
        conclusion.num_failed,
        t0.elapsed().as_secs()
    );
    conclusion.exit_code()
}
