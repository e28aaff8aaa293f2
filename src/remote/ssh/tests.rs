//! Unit tests of the SSH transport (src/remote/ssh/mod.rs) that need no host.

use super::*;

#[test]
fn ssh_naming_no_peer_gets_the_hosts_name_address_and_port() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let inv = crate::inventory::Inventory::load(&root.join("lab/inventory.yaml")).unwrap();
    let host = inv.host("web-02").unwrap();
    let said = b"Connection to UNKNOWN port 65535 timed out\r\n".to_vec();
    let named = String::from_utf8(named_peer(said, host)).unwrap();
    assert_eq!(
        named,
        format!(
            "Connection to web-02 ({}) port 22 timed out\r\n",
            host.address
        )
    );
    assert_eq!(named_peer(b"other".to_vec(), host), b"other");
}

/// An agent (or anything posing as one) that answers with more than 64 MiB on one
/// line: the controller stops reading at the limit and refuses the answer.
#[tokio::test]
async fn finding_7_an_agent_answer_past_the_limit_is_refused() {
    let mut huge = vec![b'x'; capped::MAX_FROM_HOST + 1024];
    huge.push(b'\n');
    let mut reader = tokio::io::BufReader::new(&huge[..]);
    let mut sent = Vec::new();
    let got = exchange(&mut sent, &mut reader, b"{}").await;
    assert!(got.is_err(), "an answer past the limit was accepted");

    let mut reader = tokio::io::BufReader::new(&b"{\"ok\": true}\n"[..]);
    let mut sent = Vec::new();
    assert!(exchange(&mut sent, &mut reader, b"{}").await.is_ok());
    assert_eq!(sent, b"2\n{}");
}
