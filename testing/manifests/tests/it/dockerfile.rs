//! No image can be built here, so the Dockerfiles are read: each builds a binary that its
//! package in the workspace declares, statically, and runs it as a non-root user on a minimal
//! base.

use anyhow::{Context as _, ensure};

use crate::support::repo;

/// Each Dockerfile's directory, the package it builds and the binary.
const IMAGES: [(&str, &str, &str); 4] = [
    ("proxy", "sekisho-proxy", "sekisho-proxy"),
    ("agent", "sekisho-agent", "sekisho-agent"),
    ("operator", "sekisho-operator", "sekisho-operator"),
    ("tunnel-cli", "sekisho-cli", "sekisho"),
];

/// The instructions of a Dockerfile, continuation lines joined, comments left out.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// Whether the package's manifest (`dir/Cargo.toml`) is named `package` and declares `bin`.
fn declares(dir: &str, package: &str, bin: &str) -> anyhow::Result<()> {
    let path = repo().join(dir).join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"'))
        .collect();
    ensure!(
        names.first() == Some(&package),
        "{}: the package is not {package}: {names:?}",
        path.display()
    );
    ensure!(
        names.contains(&bin) && text.contains("[[bin]]")
            || !text.contains("[[bin]]") && package == bin,
        "{}: no binary {bin}",
        path.display()
    );
    let workspace = std::fs::read_to_string(repo().join("Cargo.toml"))?;
    ensure!(
        workspace.contains(&format!("\"{dir}\"")),
        "{dir} is not a workspace member"
    );
    Ok(())
}

#[test]
fn every_dockerfile_builds_a_binary_of_the_workspace_statically_and_runs_it_as_a_non_root_user()
-> anyhow::Result<()> {
    for (dir, package, bin) in IMAGES {
        let path = repo().join(dir).join("Dockerfile");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let steps = instructions(&text);
        let name = path.display();
        declares(dir, package, bin)?;

        // As whole words: `--bin sekisho` must not match `--bin sekisho-cli`.
        let build = format!(
            "cargo build --release --locked --target x86_64-unknown-linux-musl -p {package} --bin {bin}"
        );
        let build: Vec<&str> = build.split_whitespace().collect();
        ensure!(
            steps.iter().any(|s| s.starts_with("RUN ")
                && s.split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(build.len())
                    .any(|w| w == build.as_slice())),
            "{name}: no `{}`",
            build.join(" ")
        );

        // The image is the last stage: a minimal base, the binary, a non-root user.
        let last = steps
            .iter()
            .rposition(|s| s.starts_with("FROM "))
            .context("no FROM")?;
        let image = &steps[last..];
        ensure!(
            image[0] == "FROM scratch" || image[0].starts_with("FROM gcr.io/distroless/static"),
            "{name}: the image is not built on scratch or distroless/static: {}",
            image[0]
        );
        let user = image
            .iter()
            .rev()
            .find_map(|s| s.strip_prefix("USER "))
            .context("no USER in the image")?;
        let uid = user.split(':').next().unwrap_or_default();
        ensure!(
            uid.parse::<u32>().is_ok_and(|uid| uid != 0),
            "{name}: USER {user} is not a numeric non-root user"
        );
        ensure!(
            image
                .iter()
                .any(|s| s.starts_with("COPY --from=")
                    && s.ends_with(&format!("/usr/local/bin/{bin}"))),
            "{name}: the binary is not copied into the image"
        );
        ensure!(
            image
                .iter()
                .any(|s| s == &format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "{name}: the entrypoint is not {bin}"
        );
        for label in ["title", "description", "version", "licenses"] {
            ensure!(
                text.contains(&format!("org.opencontainers.image.{label}=")),
                "{name}: no {label} label"
            );
        }
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore"))?;
    for entry in ["target/", ".cache/", "node_modules/"] {
        assert!(
            ignore.lines().any(|l| l.trim_start_matches("**/") == entry),
            ".dockerignore leaves out {entry}"
        );
    }
    Ok(())
}
