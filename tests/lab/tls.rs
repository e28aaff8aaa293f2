//! End-to-end tests of HTTPS at the load balancer (issue 6) and certificate expiry in
//! `status` (issue 9), on the lab. curl and openssl talk to the lab's load balancer only.

use std::process::Command;

use crate::common::*;

lab_tests!(
    https_with_the_lab_ca_redirects_http_and_refuses_tls_1_1,
    a_certificate_expiring_in_three_days_fails_status,
);

fn tls_inventory(name: &str, tls_dir: &str) -> String {
    let v = lab_variant(name, |t| {
        t.replace(
            "secrets:",
            &format!("tls:\n  cert: .state/{tls_dir}/server.pem\n  key: tls_key\nsecrets:\n  tls_key: {{ file: .state/{tls_dir}/server.key }}"),
        )
    });
    v.display().to_string()
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--resolve",
            &format!("www.foobar.com:443:{}", lb()),
            "--resolve",
            &format!("www.foobar.com:80:{}", lb()),
        ])
        .args(args)
        .output()
        .expect("curl (installed by .ci/run)");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn https_with_the_lab_ca_redirects_http_and_refuses_tls_1_1() {
    lab();
    let inv = tls_inventory("tls", "tls");
    let out = cli(&["apply", &inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string(state_dir().join("tls/server.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(
        !all.contains(key_line),
        "the private key never shows in output"
    );
    assert_eq!(
        exec(
            "lb-01",
            &[
                "stat",
                "-c",
                "%a %U",
                "/etc/haproxy/certs/www.foobar.com.pem"
            ]
        )
        .trim(),
        "600 root"
    );

    let ca = state_dir().join("tls/ca.pem");
    let (head, err) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-D",
        "-",
        "-o",
        "/dev/null",
        "https://www.foobar.com/health",
    ]);
    assert!(
        head.starts_with("HTTP/2 200") || head.starts_with("HTTP/1.1 200"),
        "{head}{err}"
    );
    assert!(
        head.to_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let (head, _) = curl(&["-D", "-", "-o", "/dev/null", "http://www.foobar.com/health"]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("location: https://www.foobar.com/health"),
        "{head}"
    );

    // TLS 1.1 is refused by the server (the client is allowed to try it).
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{}:443", lb()),
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("alert protocol version") || said.contains("unsupported protocol"),
        "{said}"
    );
    assert!(said.contains("Cipher is (NONE)"), "{said}");
    // And TLS 1.2 works.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{}:443", lb()),
            "-tls1_2",
            "-servername",
            "www.foobar.com",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Protocol  : TLSv1.2"));

    // The backends' health checks stay plain HTTP and keep working.
    assert_eq!(cli(&["status", &inv]).status.code(), Some(0));

    // Back to plain HTTP: the certificate file leaves the plan and is removed.
    let out = cli(&["apply", &lab_inventory().display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        remote_sha("lb-01", "/etc/haproxy/certs/www.foobar.com.pem"),
        ""
    );
}

fn a_certificate_expiring_in_three_days_fails_status() {
    lab();
    let made = Command::new("bash")
        .arg(root().join("lab/tls"))
        .arg(state_dir().join("tls-short"))
        .arg("3")
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let inv = tls_inventory("tls-short", "tls-short");
    let out = cli(&["apply", &inv]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // apply deploys it, and says it expires soon (issue 19).
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("warning lb-01: the certificate in /etc/haproxy/certs/www.foobar.com.pem expires in 2.")
            || said.contains("warning lb-01: the certificate in /etc/haproxy/certs/www.foobar.com.pem expires in 3.0"),
        "{said}"
    );
    let status = cli(&["status", &inv]);
    let back = cli(&["apply", &lab_inventory().display().to_string()]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains(
            "lb-01: PROBLEM: certificate /etc/haproxy/certs/www.foobar.com.pem expires in"
        ),
        "{stdout}"
    );
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
}
