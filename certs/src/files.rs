//! Atomic, permission-aware file writes for keys and certificates.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` with mode 0600, atomically: a temp file in the same directory, then rename.
///
/// Readers never see a half-written key, and the key is never readable by others, not even briefly.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a public file (certificate) atomically with mode 0644.
pub(crate) fn write_public_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o644)
}

/// Creates `dir` if needed and restricts it to its owner (0700), since it holds private keys.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // tempfile creates the file 0600 and with O_EXCL, so a secret is never exposed in between.
    let mut tmp = tempfile::Builder::new()
        .prefix(".sipreg-tmp-")
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    if mode != 0o600 {
        set_mode(tmp.path(), mode)?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable; a failure here does not undo the write, so it is not fatal.
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secret_file_is_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_secret_file(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        // Overwriting an existing, looser file leaves it 0600 with the new content.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_secret_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.pem")]);
    }

    #[test]
    fn public_file_is_0644_and_dir_0700() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pki");
        ensure_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        let path = sub.join("c.pem");
        write_public_file(&path, b"cert").unwrap();
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn write_into_missing_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_secret_file(&dir.path().join("nope/k.pem"), b"x").is_err());
    }
}
