//! The agent's key file: one PKCS#8 PEM Ed25519 private key, readable by the agent alone.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sekisho_wire::agent_auth::{AgentKey, CredentialError};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: cannot read the key file", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: invalid key file", .path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: CredentialError,
    },
    #[error("{}: the file exists (pass --force to replace it)", .path.display())]
    Exists { path: PathBuf },
    #[error("{}: cannot write the key file", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot generate a key")]
    Generate(#[source] CredentialError),
}

/// Reads the key at `path`. A file that others can read still loads, with a warning.
pub fn load(path: &Path) -> Result<AgentKey, KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "the key file is readable by others; chmod 600 it"
        );
    }
    AgentKey::from_pem(&text).map_err(|source| KeyError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new key to `path` with mode 0600, creating missing parent directories with mode
/// 0700. An existing file is kept unless `force`; then it is replaced atomically (written
/// aside, renamed over), so a crash never leaves half a key.
pub fn create(path: &Path, force: bool) -> Result<AgentKey, KeyError> {
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let (key, pem) = AgentKey::generate().map_err(KeyError::Generate)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(write)?;
    }
    if !force {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match file {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyError::Exists {
                    path: path.to_owned(),
                });
            }
            other => other.map_err(write)?,
        };
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write)?;
        return Ok(key);
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(".new");
    let aside = PathBuf::from(aside);
    let _ = std::fs::remove_file(&aside);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .map_err(write)?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&aside, path))
        .map_err(write)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/agent/agent.key");
        let key = create(&path, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(load(&path).unwrap().public_key(), key.public_key());
    }

    #[test]
    fn an_existing_key_is_replaced_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let first = create(&path, false).unwrap();
        assert!(matches!(create(&path, false), Err(KeyError::Exists { .. })));
        assert_eq!(load(&path).unwrap().public_key(), first.public_key());
        let second = create(&path, true).unwrap();
        assert_ne!(second.public_key(), first.public_key());
        assert_eq!(load(&path).unwrap().public_key(), second.public_key());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        std::fs::write(&path, "hello").unwrap();
        let error = load(&path).unwrap_err();
        assert!(matches!(error, KeyError::Invalid { .. }));
        assert!(error.to_string().contains("agent.key"));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }
}
