#!/usr/bin/env bash
# Runs every test on a fresh Debian machine of the project's kind: installs what the tests
# need, builds the Kubernetes control plane they start (cached in .cache/), then runs the
# whole workspace's tests, the dev OpenID provider's tests and a short run of every fuzz target
# (nightly and cargo-fuzz, installed when missing). Usage: scripts/test.sh [extra cargo test
# arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

# chromium and chromium-driver: the real headless browser of testkit's end-to-end tests;
# openssh-server and openssh-client: the real sshd and ssh/scp of the tunnel tests (testing/e2e/);
# nginx-light: the real upstream the path-normalisation tests check the proxy against.
need_packages=()
for pkg in ca-certificates iproute2 procps chromium chromium-driver openssh-server openssh-client nginx-light; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_packages+=("$pkg")
done
if [ ${#need_packages[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_packages[*]}"
  # Keep the packages' init scripts from starting nginx and sshd as services.
  policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
fi

log "building (or reusing) kube-apiserver, kube-controller-manager and etcd"
testing/kube/build.sh

# The manifest tests (testing/manifests) render the Helm chart and the kustomize base and
# install cert-manager's and the Prometheus operator's CRDs beside Sekisho's.
log "building (or reusing) helm and kustomize; fetching cert-manager's and the Prometheus operator's CRDs"
testing/deploy-tools/build.sh

# Before cargo test: the identity and proxy tests start devidp, which needs its npm packages.
log "devidp: npm ci (the dev OpenID provider the identity tests log in against)"
(cd testing/devidp && npm ci --no-audit --no-fund --silent)

# The end-to-end tests (testing/e2e/) run the agent and CLI binaries of other packages.
log "cargo build --workspace --bins"
cargo build --workspace --bins

log "cargo test --workspace"
cargo test --workspace "$@"

log "devidp: node --test"
(cd testing/devidp && node --test test/)

# Every fuzz target stays buildable and replays its seeds (the crashes found before among
# them); docs/fuzzing.md has the long runs.
log "fuzz targets: a quick build and 3 s each (scripts/fuzz.sh --ci)"
scripts/fuzz.sh --ci
