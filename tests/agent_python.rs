//! The agent's Python unit tests (tests/agent/test_*.py, stdlib unittest, temporary
//! directories and stand-in commands: no Docker), run with the machine's python3.

use std::process::Command;

#[test]
fn the_agents_python_tests_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests/agent", "-v"])
        .current_dir(root)
        .output()
        .expect("python3 runs (it is what the hosts run the agent with)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
}
