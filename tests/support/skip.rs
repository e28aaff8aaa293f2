#![allow(dead_code)]
//! What a fast-tier test could not do on this machine, said where it shows: a tool the
//! test needs is missing (.ci/run installs it). Under `CI=true` that is a failure;
//! elsewhere a line on the terminal, written past libtest's output capture (which holds
//! back `eprintln!` of a passing test).

use std::io::Write;

/// Whether this is CI (`CI=true`, as .ci/run sets it): every tool is there.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says on the terminal what was not checked here and why (a failure under CI=true).
pub fn not_checked(what: &str) {
    assert!(!ci(), "CI=true, yet {what}: .ci/run installs what it needs");
    // std::io::stderr() itself, not eprintln!: the test harness captures only the latter.
    let _ = writeln!(std::io::stderr(), "\n!!! NOT CHECKED HERE: {what} !!!");
}
