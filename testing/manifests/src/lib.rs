//! Test-only: Sekisho's install manifests checked the way a cluster would read them. The
//! tests (in `tests/it`) render the Helm chart (`deploy/helm/sekisho`) and the kustomize base
//! and overlays (`deploy/operator`, `deploy/examples/kustomize`) with the real `helm` and
//! `kustomize`, and apply every object they produce to a real kube-apiserver (`kube-testenv`)
//! by server-side apply with dry-run and strict field validation, after installing Sekisho's
//! CRDs and cert-manager's and the Prometheus operator's. They also keep the copies honest: the
//! chart's CRDs are the generated ones, its ClusterRole has the rules of
//! `deploy/operator/rbac.yaml`, it installs what the kustomize base installs, and each
//! `Dockerfile` builds a binary of the workspace and runs it as a non-root user; the agent's
//! example configuration is one the agent accepts, where its systemd unit reads it.
//!
//! `helm`, `kustomize` and the third-party CRDs come from `testing/deploy-tools/build.sh`
//! (into `.cache/deploy-tools`, or `$SEKISHO_DEPLOY_TOOLS`); without them the tests fail with
//! a message naming that script. Nothing shipped depends on this crate.
