//! Hashes of files that carry a secret, as they leave the controller (plan.json, `diff
//! --json`, `plan --json`): HMAC-SHA256 under a controller key, not the content's
//! SHA-256, which with a known template would let anyone who reads them test password
//! guesses offline. Other files keep their plain SHA-256 (comparable with sha256sum).
//!
//! The key is `FOOBAR_HASH_KEY` when set (the same value where plans are made and
//! applied, e.g. a CI secret), else this controller's own, made on first use in
//! `$XDG_STATE_HOME/foobar-infra/hash-key` (or `~/.local/state/...`), mode 0600.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::ser::{Serialize, SerializeStruct, Serializer};
use sha2::{Digest, Sha256};

use crate::diff::FileChange;

/// How a keyed hash starts, so that a reader knows it cannot recompute it.
pub const PREFIX: &str = "hmac-sha256:";
pub const KEY_ENV: &str = "FOOBAR_HASH_KEY";

/// The published form of a file's SHA-256 (hex).
pub fn keyed(sha256_hex: &str) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(hmac(key(), sha256_hex.as_bytes()))
    )
}

/// Whether a published hash (keyed or plain) is that of a file with this SHA-256.
pub fn matches(published: &str, sha256_hex: &str) -> bool {
    if published.starts_with(PREFIX) {
        keyed(sha256_hex) == published
    } else {
        published == sha256_hex
    }
}

/// HMAC-SHA256 (RFC 2104) with a 32-byte key.
fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let pad = |byte: u8| {
        let mut block = [byte; 64];
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        block
    };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        if let Some(v) = std::env::var_os(KEY_ENV).filter(|v| !v.is_empty()) {
            return Sha256::digest(v.as_encoded_bytes()).into();
        }
        // Tests never write a key into the user's home.
        if cfg!(test) {
            return random();
        }
        // Without a place to keep one, a key for this run: its plans can only be applied
        // by this process (a later apply sees them as changed and refuses).
        key_file()
            .and_then(|path| load_or_create(&path).ok())
            .unwrap_or_else(random)
    })
}

fn key_file() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(state.join("foobar-infra").join("hash-key"))
}

/// This controller's key from `path`, made there (0600, in a 0700 folder) if missing.
fn load_or_create(path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::os::unix::fs::DirBuilderExt;
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        // Written whole under another name, then linked: a second run racing this one
        // reads a complete key (the first link wins).
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".{}.partial", std::process::id()));
        let partial = PathBuf::from(partial);
        {
            use std::io::Write;
            let mut file = crate::private_file::create(&partial)?;
            file.write_all(hex::encode(random()).as_bytes())?;
            file.sync_all()?;
        }
        let linked = std::fs::hard_link(&partial, path);
        let _ = std::fs::remove_file(&partial);
        match linked {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path)?;
    anyhow::ensure!(text.trim().len() >= 32, "{}: too short", path.display());
    Ok(Sha256::digest(text.trim().as_bytes()).into())
}

fn random() -> [u8; 32] {
    use std::io::Read;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .expect("reading /dev/urandom");
    key
}

/// A file change as `--json` and plan.json show it: the hashes of a file that carries
/// a secret (or of one being deleted, whose content is not known to be free of one)
/// are keyed; the resolved content is never serialized.
impl Serialize for FileChange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every field named: a new one must be placed here (or the build fails).
        let FileChange {
            path,
            kind,
            service,
            diff,
            observed_sha256,
            new_sha256,
            new_content: _,
            mode,
            owner,
            group,
            carries_secret,
        } = self;
        let publish = |h: &Option<String>| match h {
            Some(h) if *carries_secret => Some(keyed(h)),
            other => other.clone(),
        };
        let mut st = s.serialize_struct("FileChange", 9)?;
        st.serialize_field("path", path)?;
        st.serialize_field("kind", kind)?;
        st.serialize_field("service", service)?;
        st.serialize_field("diff", diff)?;
        st.serialize_field("observed_sha256", &publish(observed_sha256))?;
        st.serialize_field("new_sha256", &publish(new_sha256))?;
        st.serialize_field("mode", mode)?;
        st.serialize_field("owner", owner)?;
        st.serialize_field("group", group)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_is_rfc_4231s_and_published_hashes_are_keyed() {
        // RFC 4231 test case 1 uses a 20-byte key: padded with zeros it is ours.
        let mut k = [0u8; 32];
        k[..20].copy_from_slice(&[0x0b; 20]);
        assert_eq!(
            hex::encode(hmac(&k, b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let plain = hex::encode(Sha256::digest(b"password = hunter2\n"));
        let published = keyed(&plain);
        assert!(published.starts_with(PREFIX) && !published.contains(&plain));
        assert!(matches(&published, &plain) && !matches(&published, "00"));
        assert!(matches(&plain, &plain));
    }

    /// Finding 14 of issue 20: plan.json and `diff --json` carried the SHA-256 of
    /// app.ini before and after (a known template plus the password).
    #[test]
    fn finding_14_hashes_of_files_with_secrets_are_not_published_plain() {
        use crate::diff::sha256_hex;
        use crate::secrets::{placeholders_in, Secrets};
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let inv =
            crate::inventory::Inventory::load(&root.join("inventory/inventory.yaml")).unwrap();
        let templates = crate::templates::Templates::load(None).unwrap();
        let plan = crate::render::render(&inv, &templates).unwrap();
        let secrets = Secrets::with(&[
            ("db_app_password", "hunter2"),
            ("db_replication_password", "swordfish"),
        ]);
        // Every planned file is on every host, with other content (e.g. an old password).
        let old = |path: &str| sha256_hex(format!("old {path} password = letmein").as_bytes());
        let mut observed = std::collections::BTreeMap::new();
        for hp in &plan.hosts {
            let files: serde_json::Map<String, serde_json::Value> = (hp.files.iter())
                .map(|f| {
                    (
                        f.path.clone(),
                        serde_json::json!({"exists": true, "sha256": old(&f.path)}),
                    )
                })
                .collect();
            let state =
                serde_json::json!({"init": "systemd", "hostname": hp.name(), "files": files});
            observed.insert(
                hp.name().to_string(),
                serde_json::from_value(state).unwrap(),
            );
        }
        let changes = crate::diff::diff(&plan, &observed, &secrets).unwrap();
        let file =
            crate::planfile::build(&inv, &templates.source_hash(), &plan, &observed, &changes)
                .unwrap();
        let published =
            serde_json::to_string(&file).unwrap() + &serde_json::to_string(&changes.hosts).unwrap();
        let (mut with_secrets, mut plain) = (0, 0);
        for f in plan.hosts.iter().flat_map(|hp| &hp.files) {
            let new = sha256_hex(secrets.resolve(&f.content).unwrap().as_bytes());
            if f.init.is_some() {
                continue; // one of the init system's files, not all compared here
            } else if placeholders_in(&f.content).is_empty() {
                plain += 1;
                assert!(published.contains(&new), "{} is published as it is", f.path);
            } else {
                with_secrets += 1;
                assert!(!published.contains(&new), "{}: new hash published", f.path);
                assert!(!published.contains(&old(&f.path)), "{}: old hash", f.path);
            }
        }
        assert!(with_secrets > 0 && plain > 0);
    }

    #[test]
    fn the_controller_key_is_made_once_0600_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/foobar-infra/hash-key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir_mode.permissions().mode() & 0o777, 0o700);
    }
}
