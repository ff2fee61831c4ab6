//! What the API server accepts and refuses.

use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use kube::api::{DynamicObject, PostParams};
use serde_json::Value;

use crate::{REPOSITORY, assert_kept, install, read_yaml, said, yaml_files};

#[tokio::test]
async fn every_example_is_accepted_and_read_back_as_written() -> anyhow::Result<()> {
    let installed = install().await?;
    let namespace = installed.env.namespace("examples").await?;
    let examples = yaml_files(&Path::new(REPOSITORY).join("deploy/examples/crds"))?;
    for (path, _) in &examples {
        let written = read_yaml(path)?;
        let api = installed.api_for(&written, &namespace)?;
        let object: DynamicObject = serde_json::from_value(written.clone())?;
        let created = api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| anyhow::anyhow!("{} was refused: {}", path.display(), said(&e)))?;
        let read = serde_json::to_value(&created)?;
        assert_kept(&written["spec"], &read["spec"], &path.display().to_string())?;
    }
    Ok(())
}

/// A fixture's expectations, from its first lines: `# field: F` and `# message: M`.
fn expected(text: &str, path: &Path) -> anyhow::Result<(String, String)> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .map(str::to_owned)
            .with_context(|| format!("{} has no `# {key}:` line", path.display()))
    };
    Ok((line("field")?, line("message")?))
}

#[tokio::test]
async fn invalid_objects_are_refused_with_a_message_naming_the_field() -> anyhow::Result<()> {
    let installed = install().await?;
    let namespace = installed.env.namespace("invalid").await?;
    let fixtures = yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid"))?;
    let mut failures = Vec::new();
    for (path, text) in &fixtures {
        let (field, message) = expected(text, path)?;
        let written: Value = read_yaml(path)?;
        let api = installed.api_for(&written, &namespace)?;
        let object: DynamicObject = serde_json::from_value(written)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(kube::Error::Api(status)) => {
                let said = &status.message;
                println!("{name}: {said}");
                let names_field =
                    said.contains(&format!("{field}: ")) || said.contains(&format!("{field} "));
                if status.code != 422 || !names_field || !said.contains(&message) {
                    failures.push(format!(
                        "{name}: expected 422 naming `{field}` with `{message}`, got {}: {said}",
                        status.code
                    ));
                }
            }
            Err(other) => bail!("{name}: {other}"),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
