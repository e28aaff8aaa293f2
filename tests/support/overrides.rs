#![allow(dead_code)]
//! Template overrides for tests: a directory holding built-in templates with one text
//! replaced (e.g. an nginx directive made invalid), for `--templates DIR`.

use std::path::PathBuf;

/// Writes `template` (from templates/) into `dir` with `from` replaced by `to`.
pub fn override_template(dir: &tempfile::TempDir, template: &str, from: &str, to: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("templates").join(template)).unwrap();
    assert!(text.contains(from), "{template} has no {from:?}");
    std::fs::write(dir.path().join(template), text.replace(from, to)).unwrap();
}

/// An nginx site that nginx -t rejects: `keepalive sixteen;` on line 4.
pub fn broken_nginx_site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    override_template(
        &dir,
        "nginx-site.conf",
        "keepalive 16;",
        "keepalive sixteen;",
    );
    dir
}
