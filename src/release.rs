//! Application releases: the application files of `app.source`, packed as a
//! deterministic tar whose content hash is the release id, so deploying the same files
//! twice is a no-op and a release id names exactly one set of bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The packed release.
pub struct Packed {
    pub id: String,
    pub tar: Vec<u8>,
    pub files: usize,
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Caches and VCS data are not part of a release.
        if name == "__pycache__" || name.starts_with(".git") || name.ends_with(".pyc") {
            continue;
        }
        let path = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(base, &path, out)?;
        } else if ft.is_file() {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// Packs `dir`: files sorted by path, owner root, mtime 0, mode 0644 or 0755.
pub fn pack(dir: &Path) -> Result<Packed> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)
        .with_context(|| format!("reading the application files in {}", dir.display()))?;
    if files.is_empty() {
        anyhow::bail!("app.source {}: no files", dir.display());
    }
    let mut hasher = Sha256::new();
    let mut builder = tar::Builder::new(Vec::new());
    for rel in &files {
        let full = dir.join(rel);
        let data = std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
        #[cfg(unix)]
        let exec = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&full)?.permissions().mode() & 0o111 != 0
        };
        #[cfg(not(unix))]
        let exec = false;
        let mode = if exec { 0o755 } else { 0o644 };
        let name = rel.to_string_lossy().replace('\\', "/");
        hasher.update(name.as_bytes());
        hasher.update([0, exec as u8]);
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(&data);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &name, data.as_slice())
            .with_context(|| format!("packing {name}"))?;
    }
    let tar = builder
        .into_inner()
        .context("finishing the release archive")?;
    let id = hex::encode(hasher.finalize())[..12].to_string();
    Ok(Packed {
        id,
        tar,
        files: files.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_files_same_id_and_bytes() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("app")).unwrap();
        std::fs::write(a.path().join("app/x.py"), "print(1)\n").unwrap();
        std::fs::write(a.path().join("b.txt"), "b").unwrap();
        let p1 = pack(a.path()).unwrap();
        let p2 = pack(a.path()).unwrap();
        assert_eq!(p1.id, p2.id);
        assert_eq!(p1.tar, p2.tar);
        assert_eq!(p1.files, 2);
        std::fs::write(a.path().join("b.txt"), "c").unwrap();
        assert_ne!(pack(a.path()).unwrap().id, p1.id);
    }
}
