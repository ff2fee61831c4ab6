use std::{io, path::PathBuf, sync::Arc, time::Duration};

/// Why the control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name} not found in {}: run testing/kube/build.sh", dir.display())]
    BinaryMissing { name: &'static str, dir: PathBuf },

    #[error("could not create the temporary directory")]
    TempDir(#[source] io::Error),

    #[error("could not generate the test certificates")]
    Certificate(#[source] rcgen::Error),

    #[error("could not write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not find a free loopback port")]
    FreePort(#[source] io::Error),

    #[error("could not start {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{name} exited ({status}) before it was ready; the end of {}:\n{log_tail}", log.display())]
    Exited {
        name: &'static str,
        status: String,
        log: PathBuf,
        log_tail: String,
    },

    #[error("{name} was not ready after {waited:?}; the end of {}:\n{log_tail}", log.display())]
    NotReady {
        name: &'static str,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },

    #[error("the generated kubeconfig was rejected")]
    Kubeconfig(#[source] kube::config::KubeconfigError),

    #[error("could not build a Kubernetes client")]
    Client(#[source] kube::Error),

    #[error("the API server refused to {action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("the TokenRequest for ServiceAccount {namespace}/{name} returned no token")]
    TokenMissing { namespace: String, name: String },

    #[error("the shared control plane of this test binary failed to start")]
    SharedStartFailed(#[source] Arc<Error>),
}
