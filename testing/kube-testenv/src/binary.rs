use std::path::{Path, PathBuf};

use crate::Error;

/// Where `testing/kube/build.sh` puts the binaries unless `SEKISHO_KUBE_BIN` says otherwise.
const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/kube/bin");

/// The three control-plane binaries, all found in one directory.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `$SEKISHO_KUBE_BIN`, or else in the repository's
    /// `.cache/kube/bin`.
    pub fn locate() -> Result<Self, Error> {
        match std::env::var_os("SEKISHO_KUBE_BIN") {
            Some(dir) if !dir.is_empty() => Self::in_dir(Path::new(&dir)),
            _ => Self::in_dir(Path::new(DEFAULT_DIR)),
        }
    }

    /// Finds the binaries in `dir`, naming the first one that is missing.
    pub fn in_dir(dir: &Path) -> Result<Self, Error> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let dir = normalise(&dir);
        let find = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::BinaryMissing {
                    name,
                    dir: dir.clone(),
                })
            }
        };
        Ok(Self {
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            etcd: find("etcd")?,
        })
    }
}

/// Removes `..` and `.` components so that error messages show a plain path.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named_with_the_command_that_builds_it() {
        let empty = tempfile::tempdir().unwrap();
        let error = Binaries::in_dir(empty.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("kube-apiserver not found in "),
            "{message}"
        );
        assert!(
            message.ends_with(": run testing/kube/build.sh"),
            "{message}"
        );
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_default_directory_is_the_repository_cache() {
        assert_eq!(
            normalise(Path::new(DEFAULT_DIR)),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .unwrap()
                .join(".cache/kube/bin")
        );
    }
}
