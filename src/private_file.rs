//! Files on the controller that only their owner may read (database backups and their
//! records): created new, mode 0600 whatever the umask, never through a symlink
//! (O_CREAT|O_EXCL|O_NOFOLLOW), and put in place by a rename.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Creates `path` for writing, mode 0600. An existing file or symlink there is an error
/// (a backup still running, or one that was killed: the message says to remove it).
pub fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| match std::fs::symlink_metadata(path) {
            Ok(_) => format!(
                "creating {}: it already exists (another run writing it, or one that was \
                 stopped: remove it)",
                path.display()
            ),
            Err(_) => format!("creating {}", path.display()),
        })
}

/// Writes `path` whole: into `PATH.partial` made by [`create`], then renamed over it
/// (a rename replaces a symlink at `path`, never follows it).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut file = create(&partial)?;
    let written = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .and_then(|_| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Finding 10 of issue 20: `db backup` created its file with the umask's mode
    /// (0644 under 022), and its `.partial` through any symlink placed there.
    #[test]
    fn finding_10_backup_files_are_0600_new_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("foobar.sql.gz");
        write(&backup, b"dump").unwrap();
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let partial = dir.path().join("b.partial");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "kept").unwrap();
        std::os::unix::fs::symlink(&target, &partial).unwrap();
        let err = create(&partial).expect_err("a symlink is refused");
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
        let dangling = dir.path().join("d.partial");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!dir.path().join("nothing").exists());
    }
}
