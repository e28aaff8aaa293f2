//! Secrets: values read from the environment or from files named in the inventory,
//! substituted for `{{secret:NAME}}` placeholders just before a push, and masked back
//! into placeholders in anything shown to the user. Values never reach argv or logs.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};

use crate::inventory::{Inventory, SecretSource};

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The placeholder a rendered file carries for a secret.
pub fn placeholder(name: &str) -> String {
    format!("{{{{secret:{name}}}}}")
}

/// Names of the placeholders in a text, in order of first use.
pub fn placeholders_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{secret:") {
        let after = &rest[i + "{{secret:".len()..];
        match after.find("}}") {
            Some(j) => {
                let name = after[..j].to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
                rest = &after[j + 2..];
            }
            None => break,
        }
    }
    names
}

/// The `mysql_native_password` hash of a password (`*` and SHA1(SHA1(pw)) in hex):
/// what CREATE USER … IDENTIFIED BY PASSWORD takes, so the clear value never reaches
/// the database's binary log.
pub fn mysql_native_hash(password: &Secret) -> String {
    use sha1::{Digest, Sha1};
    let once = Sha1::digest(password.expose().as_bytes());
    format!("*{}", hex::encode_upper(Sha1::digest(once)))
}

/// The resolved secrets of a run.
#[derive(Default, Debug)]
pub struct Secrets {
    values: BTreeMap<String, Secret>,
}

impl Secrets {
    /// Reads the secrets named in `names` from their sources.
    pub fn load(inv: &Inventory, names: &[String]) -> Result<Secrets> {
        use crate::error::{ErrorKind, Kind};
        Secrets::read(inv, names).kind(ErrorKind::Secret, None)
    }

    fn read(inv: &Inventory, names: &[String]) -> Result<Secrets> {
        let mut values = BTreeMap::new();
        for name in names {
            let Some(source) = inv.secrets.get(name) else {
                bail!(
                    "secret {name} is used by a template but not defined under `secrets:` in {}",
                    inv.path.display()
                );
            };
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("secret {name}: environment variable {var} is not set")
                })?,
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("secret {name}: reading file {}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            };
            if value.is_empty() {
                bail!("secret {name}: the {source} is empty");
            }
            values.insert(name.clone(), Secret(value));
        }
        Ok(Secrets { values })
    }

    /// Secrets given directly (tests).
    #[cfg(test)]
    pub fn with(values: &[(&str, &str)]) -> Secrets {
        let mut s = Secrets::default();
        for (k, v) in values {
            s.values.insert(k.to_string(), Secret(v.to_string()));
        }
        s
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.values.get(name)
    }

    /// A loaded secret, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&Secret> {
        self.values
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("secret {name} was not loaded"))
    }

    /// Replaces every placeholder with its value (in memory, just before a push), in one
    /// pass: a value is never searched for placeholders itself.
    pub fn resolve(&self, text: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("{{secret:") {
            let after = &rest[i + "{{secret:".len()..];
            let Some(j) = after.find("}}") else { break };
            let name = &after[..j];
            let Some(v) = self.values.get(name) else {
                bail!("secret {name} was not loaded");
            };
            out.push_str(&rest[..i]);
            out.push_str(v.expose());
            rest = &after[j + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Replaces every secret value in a text by its placeholder (for display).
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a value that contains another is masked whole.
        let mut by_len: Vec<_> = self.values.iter().collect();
        by_len.sort_by_key(|(_, v)| std::cmp::Reverse(v.0.len()));
        for (name, v) in by_len {
            out = out.replace(v.expose(), &placeholder(name));
        }
        out
    }
}

impl Secrets {
    /// A host's copy of a file, for display: current secret values masked, and also
    /// values that are no longer current (a secret being rotated, or a hand edit) where
    /// the template (`planned`, with placeholders) puts a secret: on a line of the same
    /// shape (`password = {{secret:x}}` masks any `password = ...`), and in any PEM
    /// private-key block.
    pub fn mask_like(&self, host_text: &str, planned: &str) -> String {
        let masked = self.mask(host_text);
        let mut shapes: Vec<(String, String, String)> = Vec::new();
        for line in planned.lines() {
            if let Some(start) = line.find("{{secret:") {
                if let Some(len) = line[start..].find("}}") {
                    let name = line[start + 9..start + len].to_string();
                    let (prefix, suffix) = (&line[..start], &line[start + len + 2..]);
                    if !prefix.trim().is_empty() || !suffix.trim().is_empty() {
                        shapes.push((prefix.to_string(), suffix.to_string(), name));
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut in_key = false;
        for line in masked.split_inclusive('\n') {
            let body = line.trim_end_matches('\n');
            let eol = &line[body.len()..];
            if body.starts_with("-----BEGIN") && body.contains("PRIVATE KEY") {
                in_key = true;
                out.push(format!("(a private key, not shown){eol}"));
                continue;
            }
            if in_key {
                in_key = !(body.starts_with("-----END") && body.contains("PRIVATE KEY"));
                continue;
            }
            let hidden = shapes.iter().find_map(|(prefix, suffix, name)| {
                let middle = body
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                (!middle.contains("{{secret:")).then(|| {
                    format!("{prefix}(a value that is not the current secret {name}){suffix}{eol}")
                })
            });
            out.push(hidden.unwrap_or_else(|| line.to_string()));
        }
        out.concat()
    }

    /// The same error with every secret value masked (validators echo config lines).
    pub fn mask_error(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        let masked = self.mask(&text);
        if masked == text {
            e
        } else {
            // The text changes; the kind and host stay (src/error.rs).
            let (kind, host) = crate::error::kind_of(&e);
            crate::error::tag(anyhow::anyhow!(masked), kind, host.as_deref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 2 of issue 20: a value is inserted as it is, never resolved in turn.
    #[test]
    fn finding_2_a_resolved_value_is_not_searched_for_placeholders() {
        let s = Secrets::with(&[("a", "x{{secret:b}}y"), ("b", "B")]);
        let text = "1 {{secret:a}} 2 {{secret:b}}";
        assert_eq!(s.resolve(text).unwrap(), "1 x{{secret:b}}y 2 B");
    }

    #[test]
    fn resolve_and_mask_round_trip() {
        let mut s = Secrets::default();
        s.values.insert("db".into(), Secret("hunter2".into()));
        let text = "password = {{secret:db}}\n";
        let resolved = s.resolve(text).unwrap();
        assert_eq!(resolved, "password = hunter2\n");
        assert_eq!(s.mask(&resolved), text);
        assert_eq!(format!("{:?}", s.get("db").unwrap()), "***");
        // A value that is no longer the secret's (rotation) is hidden by the line's shape.
        let host = "user = app\npassword = oldvalue\n";
        let shown = s.mask_like(host, text);
        assert!(!shown.contains("oldvalue"), "{shown}");
        assert_eq!(
            shown,
            "user = app\npassword = (a value that is not the current secret db)\n"
        );
        assert_eq!(s.mask_like(&resolved, text), text);
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n";
        let shown = s.mask_like(pem, "{{secret:key}}\n");
        assert!(
            !shown.contains("SECRETKEY") && shown.contains("AAA"),
            "{shown}"
        );
        assert_eq!(
            placeholders_in("a {{secret:x}} b {{secret:y}} {{secret:x}}"),
            ["x", "y"]
        );
    }
}
