//! The controller's own record of where the hosts it applied to are: after each apply,
//! every host of the inventory and its address, in a file per inventory under
//! `$XDG_STATE_HOME/foobar-infra/hosts/` (or `~/.local/state/...`), 0600. `--prune-host
//! NAME` without an address takes it from here, never from what hosts say (a host's
//! history can be written by whoever controls that host: SECURITY.md, finding 5), and
//! shows it for confirmation before anything connects to it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::inventory::Inventory;

/// What this controller knows of one inventory's hosts.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AddressBook {
    /// The inventory file (canonical path) these hosts are from.
    pub inventory: PathBuf,
    pub hosts: BTreeMap<String, Recorded>,
}

/// A host's address as of the last apply of the inventory that named it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub address: IpAddr,
    /// Unix seconds of that apply.
    pub applied: u64,
}

/// `$XDG_STATE_HOME/foobar-infra/hosts` (or `~/.local/state/foobar-infra/hosts`).
pub fn default_dir() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))?;
    Some(state.join("foobar-infra").join("hosts"))
}

fn canonical(inventory: &Path) -> PathBuf {
    std::fs::canonicalize(inventory).unwrap_or_else(|_| inventory.to_path_buf())
}

/// The book's file for an inventory: named by a hash of its canonical path (also the
/// name of its last canary verdict, src/run/canary.rs).
pub(crate) fn file_for(dir: &Path, inventory: &Path) -> PathBuf {
    let key = Sha256::digest(canonical(inventory).as_os_str().as_encoded_bytes());
    dir.join(format!("{}.json", hex::encode(&key[..12])))
}

impl AddressBook {
    /// The book of `inventory` in `dir` (empty when there is none yet).
    pub fn load(dir: &Path, inventory: &Path) -> Result<AddressBook> {
        let path = file_for(dir, inventory);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!("reading this controller's host records {}", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AddressBook {
                inventory: canonical(inventory),
                hosts: BTreeMap::new(),
            }),
            Err(e) => Err(e).with_context(|| {
                format!("reading this controller's host records {}", path.display())
            }),
        }
    }

    /// Records the inventory's hosts as applied at `now`, and forgets `pruned` ones.
    pub fn record(&mut self, inventory: &Inventory, pruned: &[String], now: u64) {
        for h in &inventory.hosts {
            self.hosts.insert(
                h.name.clone(),
                Recorded {
                    address: h.address,
                    applied: now,
                },
            );
        }
        for name in pruned {
            self.hosts.remove(name);
        }
    }

    /// Writes the book into `dir` (0700), whole and 0600.
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = file_for(dir, &self.inventory);
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".{}.partial", std::process::id()));
        let partial = PathBuf::from(partial);
        let _ = std::fs::remove_file(&partial);
        let text = serde_json::to_string_pretty(self).context("encoding the host records")?;
        let written = crate::private_file::create(&partial).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            std::fs::rename(&partial, &path)?;
            Ok(())
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written.with_context(|| format!("writing {}", path.display()))
    }
}

/// How an address taken from the book is confirmed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Confirm {
    /// Not needed: the command changes nothing (diff, plan, `apply --dry-run`); the
    /// address is shown.
    Shown,
    /// `--yes`.
    Given,
    /// A terminal: ask.
    Ask,
    /// Neither: refuse (the user must give `--yes` or `NAME=ADDRESS`).
    Refuse,
}

impl Confirm {
    pub fn new(yes: bool) -> Confirm {
        if yes {
            Confirm::Given
        } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            Confirm::Ask
        } else {
            Confirm::Refuse
        }
    }
}

fn when(secs: u64) -> String {
    crate::run::info::iso_utc(secs)
}

/// The address of each `--prune-host NAME[=ADDRESS]`: the one given, else this
/// controller's record (shown, and confirmed as `confirm` says; `ask` puts the question
/// and reads the answer). Hosts' own records are never consulted.
pub fn resolve_pruned(
    prune: &[(String, Option<IpAddr>)],
    book: &AddressBook,
    inventory: &Path,
    confirm: Confirm,
    ask: &mut dyn FnMut(&str) -> Result<bool>,
) -> Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    for (name, given) in prune {
        if let Some(a) = given {
            out.push((name.clone(), *a));
            continue;
        }
        let Some(rec) = book.hosts.get(name) else {
            bail!(
                "--prune-host {name}: this controller has no record of {name}'s address (it keeps the \
                 addresses of the hosts it applied {} to); give it as --prune-host {name}=ADDRESS",
                inventory.display()
            );
        };
        let seen = format!(
            "{name} at {} (this controller's apply of {} at {})",
            rec.address,
            inventory.display(),
            when(rec.applied)
        );
        let confirmed = match confirm {
            Confirm::Shown | Confirm::Given => true,
            Confirm::Ask => ask(&format!("Prune {seen}? [y/N] "))?,
            Confirm::Refuse => bail!(
                "--prune-host {name}: the address would be {seen}; with no terminal to confirm it, \
                 add --yes, or give it as --prune-host {name}={}",
                rec.address
            ),
        };
        if !confirmed {
            bail!("--prune-host {name}: not confirmed; nothing was done");
        }
        out.push((name.clone(), rec.address));
    }
    Ok(out)
}

/// [`resolve_pruned`] with this controller's records of `inventory` (read only when an
/// address is missing) and the terminal to ask on.
pub fn pruned_addresses(
    prune: &[(String, Option<IpAddr>)],
    inventory: &Path,
    confirm: Confirm,
) -> Result<Vec<(String, IpAddr)>> {
    let book = if prune.iter().all(|(_, a)| a.is_some()) {
        AddressBook::default()
    } else {
        let dir = default_dir().ok_or_else(|| {
            anyhow::anyhow!("--prune-host: no HOME for this controller's records")
        })?;
        AddressBook::load(&dir, inventory)?
    };
    resolve_pruned(prune, &book, inventory, confirm, &mut ask_on_terminal)
}

/// Asks on the terminal (stderr) and reads a yes or no from stdin.
pub fn ask_on_terminal(question: &str) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question}")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(hosts: &[(&str, &str)]) -> AddressBook {
        AddressBook {
            inventory: PathBuf::from("/srv/infra/inventory.yaml"),
            hosts: hosts
                .iter()
                .map(|(n, a)| {
                    (
                        n.to_string(),
                        Recorded {
                            address: a.parse().unwrap(),
                            applied: 1_796_300_000,
                        },
                    )
                })
                .collect(),
        }
    }

    fn never(_: &str) -> Result<bool> {
        panic!("asked")
    }

    /// Finding 5 of issue 20: without `=ADDRESS`, `--prune-host NAME` took the address
    /// from any host's history. Now: the command line, or this controller's own record,
    /// shown and confirmed (prompt, or `--yes`); nothing else.
    #[test]
    fn finding_5_a_pruned_hosts_address_comes_from_the_controller_and_is_confirmed() {
        let inv = Path::new("inventory.yaml");
        let b = book(&[("web-03", "10.0.1.13")]);
        let web03 = [("web-03".to_string(), None)];

        // Given on the command line: taken as it is, no question.
        let given = [("web-03".to_string(), Some("10.9.9.9".parse().unwrap()))];
        let got = resolve_pruned(&given, &b, inv, Confirm::Refuse, &mut never).unwrap();
        assert_eq!(got[0].1.to_string(), "10.9.9.9");

        // From the book: with --yes; on a terminal only if the answer is yes.
        let got = resolve_pruned(&web03, &b, inv, Confirm::Given, &mut never).unwrap();
        assert_eq!(got[0].1.to_string(), "10.0.1.13");
        let mut asked = Vec::new();
        let got = resolve_pruned(&web03, &b, inv, Confirm::Ask, &mut |q| {
            asked.push(q.to_string());
            Ok(true)
        })
        .unwrap();
        assert_eq!(got[0].1.to_string(), "10.0.1.13");
        assert!(asked[0].contains("web-03 at 10.0.1.13"), "{asked:?}");
        let e = resolve_pruned(&web03, &b, inv, Confirm::Ask, &mut |_| Ok(false)).unwrap_err();
        assert!(e.to_string().contains("not confirmed"), "{e}");

        // No terminal, no --yes: refused, showing the address and both ways to go on.
        let e = resolve_pruned(&web03, &b, inv, Confirm::Refuse, &mut never).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("10.0.1.13") && e.contains("--yes") && e.contains("web-03=10.0.1.13"),
            "{e}"
        );

        // Not in the book (whatever any host may say): refused, asking for the address.
        let e = resolve_pruned(&web03, &book(&[]), inv, Confirm::Given, &mut never).unwrap_err();
        assert!(e.to_string().contains("web-03=ADDRESS"), "{e}");
    }

    #[test]
    fn the_book_is_written_0600_and_forgets_pruned_hosts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("inventory/inventory.yaml");
        let inv = Inventory::load(&path).unwrap();
        let books = dir.path().join("hosts");
        let mut b = AddressBook::load(&books, &path).unwrap();
        assert!(b.hosts.is_empty());
        b.hosts.insert(
            "web-09".into(),
            Recorded {
                address: "10.0.1.19".parse().unwrap(),
                applied: 1,
            },
        );
        b.record(&inv, &[], 100);
        b.save(&books).unwrap();
        let again = AddressBook::load(&books, &path).unwrap();
        assert_eq!(again, b);
        assert_eq!(
            again.hosts["web-09"].applied, 1,
            "a host no longer in the inventory stays"
        );
        assert!(inv
            .hosts
            .iter()
            .all(|h| again.hosts[&h.name].address == h.address));
        let file = std::fs::read_dir(&books)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&books).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let mut b = again;
        b.record(&inv, &["web-09".to_string()], 200);
        assert!(!b.hosts.contains_key("web-09"));
    }
}
