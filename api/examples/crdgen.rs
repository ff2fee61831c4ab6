//! Writes Sekisho's CRDs into `deploy/crds/` (with its `kustomization.yaml`) and the same CRD
//! files into the Helm chart's `deploy/helm/sekisho/crds/`:
//! `cargo run -p sekisho-api --example crdgen`.
//!
//! An example rather than a binary of the crate: it is a tool for this repository (it writes
//! into the source tree, found from the crate's own directory), not something to install or
//! ship, and `cargo test` still builds it. YAML files in either directory that the types no
//! longer generate are removed, so a renamed kind leaves nothing stale behind.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = sekisho_api::crd::files()?;
    write(&root.join("deploy/crds"), &files)?;
    // Helm installs what its chart's crds/ holds, and reads no kustomization.
    let crds: Vec<_> = files
        .into_iter()
        .filter(|f| f.name != "kustomization.yaml")
        .collect();
    write(&root.join("deploy/helm/sekisho/crds"), &crds)
}

/// Makes `dir` hold exactly `files` among its YAML files.
fn write(dir: &Path, files: &[sekisho_api::crd::File]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let generated = files
            .iter()
            .any(|f| path.file_name() == Some(f.name.as_ref()));
        if !generated && path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
        }
    }
    for file in files {
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.contents)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
