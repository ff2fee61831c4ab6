//! Key files on disk, for the commands that add a key on top of one (session keys, signing
//! keys): read a file that may not exist yet, and replace a file's contents in one step.
//!
//! Only a file that does not exist counts as "no keys yet". Every other failure to read it
//! (permissions, a directory, an I/O error) is an error for the caller to report: treating it
//! as empty would rewrite the file with only the new key and end everything the old keys sealed.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The bytes of `path`; `None` when the file does not exist (and only then).
pub fn read_if_present(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces the contents of `path` with `parts`, one after the other: written to a temporary
/// file beside it, flushed to disk, then renamed over `path`, so a reader sees the old file or
/// the new one, never a mix. The new file keeps the permission bits of the file it replaces;
/// a new file is readable and writable by its owner only (0600).
pub fn replace(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = temporary_path(path)?;
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::metadata(path) {
            Ok(metadata) => metadata.permissions().mode() & 0o7777,
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0o600,
            Err(error) => return Err(error),
        }
    };
    // A temporary file left by an interrupted run may have other permissions: start afresh, so
    // that `create_new` applies the mode.
    match std::fs::remove_file(&tmp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let written = options.open(&tmp).and_then(|mut file| {
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// `.NAME.new` beside `path`.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the key file path does not end in a file name",
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".new");
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_file_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_if_present(&dir.path().join("missing")).unwrap(), None);
        let file = dir.path().join("keys");
        std::fs::write(&file, b"1:x\n").unwrap();
        assert_eq!(
            read_if_present(&file).unwrap().as_deref(),
            Some(&b"1:x\n"[..])
        );
        // A directory cannot be read as a file: an error, not "no keys yet".
        assert!(read_if_present(dir.path()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_new_one_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        replace(&new, &[b"a", b"b"]).unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"ab");
        assert_eq!(mode(&new), 0o600);

        let shared = dir.path().join("shared");
        std::fs::write(&shared, b"old").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A stale, world-readable temporary file from an interrupted run is not reused.
        let stale = dir.path().join(".shared.new");
        std::fs::write(&stale, b"stale").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&shared, &[b"new ", b"old"]).unwrap();
        assert_eq!(std::fs::read(&shared).unwrap(), b"new old");
        assert_eq!(mode(&shared), 0o640);
        assert!(!stale.exists());
    }
}
