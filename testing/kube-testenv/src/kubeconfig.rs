use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, certificate::write};

/// How a kubeconfig's user proves who it is.
#[derive(Debug)]
pub(crate) enum Credential<'a> {
    ClientCertificate { cert: &'a Path, key: &'a Path },
    TokenFile(&'a Path),
}

/// Writes `<dir>/<name>.kubeconfig` for `server`, trusting only `ca`, so that the same file
/// serves the harness, the controller manager and a person debugging with kubectl.
pub(crate) fn write_file(
    dir: &Path,
    name: &str,
    server: &str,
    ca: &Path,
    credential: &Credential<'_>,
    namespace: &str,
) -> Result<PathBuf, Error> {
    let user = match credential {
        Credential::ClientCertificate { cert, key } => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            quote(cert),
            quote(key)
        ),
        Credential::TokenFile(path) => format!("    tokenFile: {}\n", quote(path)),
    };
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: sekisho-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n\
         - name: {name}\n  user:\n{user}\
         contexts:\n\
         - name: {name}\n  context:\n    cluster: sekisho-test\n    user: {name}\n    namespace: {namespace}\n\
         current-context: {name}\n",
        ca = quote(ca),
    );
    write(dir, &format!("{name}.kubeconfig"), &text)
}

/// Loads a file written by [`write_file`] into a client configuration.
pub(crate) async fn load(path: &Path) -> Result<kube::Config, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(Error::Kubeconfig)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(Error::Kubeconfig)
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quote(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}
