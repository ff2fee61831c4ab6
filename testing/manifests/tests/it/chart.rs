//! The chart and its sources agree: its CRDs are the generated ones, its ClusterRole has the
//! rules of `deploy/operator/rbac.yaml`, it installs what the kustomize base installs, and
//! `helm lint` finds nothing.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::support::*;

/// The CRD files of a directory: `*.sekisho.dev.yaml`, by name.
fn crd_files(dir: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = repo().join(dir);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".sekisho.dev.yaml") {
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

#[test]
fn the_charts_crds_are_the_generated_ones() -> anyhow::Result<()> {
    let generated = crd_files("deploy/crds")?;
    let chart = crd_files("deploy/helm/sekisho/crds")?;
    assert!(!generated.is_empty(), "no CRDs in deploy/crds");
    let names =
        |files: &[(String, Vec<u8>)]| files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let fix = "run `cargo run -p sekisho-api --example crdgen`, which writes both";
    assert_eq!(
        names(&chart),
        names(&generated),
        "the chart's CRDs are not deploy/crds': {fix}"
    );
    for ((name, chart), (_, generated)) in chart.iter().zip(&generated) {
        assert!(
            chart == generated,
            "deploy/helm/sekisho/crds/{name} differs from deploy/crds/{name}: {fix}"
        );
    }
    Ok(())
}

#[test]
fn the_charts_cluster_role_has_the_rules_of_rbac_yaml() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo().join("deploy/operator/rbac.yaml"))?;
    let source = documents(&text)?;
    let source = find(&source, "ClusterRole", "sekisho-operator")?;
    let chart = helm_template(&[])?;
    let chart = find(&chart, "ClusterRole", "sekisho-operator")?;
    assert!(
        source["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "no rules in deploy/operator/rbac.yaml"
    );
    let (chart, source) = (&chart["rules"], &source["rules"]);
    if chart != source {
        let rules = |rules: &Value| rules.as_array().cloned().unwrap_or_default();
        let (chart, source) = (rules(chart), rules(source));
        let first = (0..chart.len().max(source.len()))
            .find(|&i| chart.get(i) != source.get(i))
            .unwrap_or_default();
        panic!(
            "deploy/helm/sekisho/templates/clusterrole.yaml's rules are not those of \
             deploy/operator/rbac.yaml (copy them from its `rules:` on); the first that differs, \
             number {}:\n  chart:    {}\n  rbac.yaml: {}",
            first + 1,
            chart
                .get(first)
                .map(Value::to_string)
                .unwrap_or_else(|| "none".into()),
            source
                .get(first)
                .map(Value::to_string)
                .unwrap_or_else(|| "none".into()),
        );
    }
    Ok(())
}

/// `kind/namespace/name` of each object.
fn ids(objects: &[Value]) -> BTreeSet<String> {
    objects.iter().map(id).collect()
}

#[test]
fn the_chart_installs_what_the_kustomize_base_installs() -> anyhow::Result<()> {
    let chart = helm_template(&[])?;
    let base = kustomize_build("deploy/operator")?;
    // The chart leaves the namespace to `helm install --create-namespace`, as charts do.
    let mut expected = ids(&base);
    assert!(
        expected.remove(&format!("Namespace//{NAMESPACE}")),
        "{expected:#?}"
    );
    assert_eq!(ids(&chart), expected);

    // The same operator: container (image, arguments, probes, hardening, resources), pod
    // security context and ServiceAccount, leader-election rules and metrics port.
    let pod = |objects: &[Value]| -> anyhow::Result<Value> {
        Ok(find(objects, "Deployment", "sekisho-operator")?["spec"]["template"]["spec"].clone())
    };
    let (chart_pod, base_pod) = (pod(&chart)?, pod(&base)?);
    for field in ["containers", "securityContext", "serviceAccountName"] {
        assert_eq!(
            chart_pod[field], base_pod[field],
            "the operator pods' {field}"
        );
    }
    assert_eq!(
        find(&chart, "Deployment", "sekisho-operator")?["spec"]["replicas"],
        find(&base, "Deployment", "sekisho-operator")?["spec"]["replicas"]
    );
    let role = "sekisho-operator-leader-election";
    assert_eq!(
        find(&chart, "Role", role)?["rules"],
        find(&base, "Role", role)?["rules"]
    );
    let service = "sekisho-operator-metrics";
    assert_eq!(
        find(&chart, "Service", service)?["spec"]["ports"],
        find(&base, "Service", service)?["spec"]["ports"]
    );
    Ok(())
}

#[test]
fn helm_lint_finds_nothing_with_the_default_values_or_the_test_values() -> anyhow::Result<()> {
    let mut runs = vec![vec!["lint", "--strict", "deploy/helm/sekisho"]];
    let values = ci_values()?;
    for file in &values {
        let file = file.to_str().context("a values path that is not UTF-8")?;
        runs.push(vec![
            "lint",
            "--strict",
            "deploy/helm/sekisho",
            "--values",
            file,
        ]);
    }
    for args in runs {
        let output = run("helm", &args)?;
        ensure!(
            output.contains("1 chart(s) linted, 0 chart(s) failed")
                && !output.contains("[WARNING]")
                && !output.contains("[ERROR]"),
            "helm {}:\n{output}",
            args.join(" ")
        );
    }
    Ok(())
}
