#!/usr/bin/env bash
# Runs the gate locally on the embedded default (deploy/examples/local.yaml): a sample
# upstream on 127.0.0.1:8081 and sekisho-proxy on https://localhost:8443 with a generated
# development certificate. No cloud account needed. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building sekisho-proxy and the sample upstream" >&2
cargo build -p sekisho-proxy --bin sekisho-proxy --example sample_upstream

./target/debug/examples/sample_upstream 127.0.0.1:8081 &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT

cat >&2 <<'MSG'

==> starting sekisho-proxy on the embedded local example
    Try, in another terminal (the CA file path is in the log line below):
      curl --cacert /tmp/sekisho-dev-ca-<pid>.pem https://localhost:8443/
      curl -k https://localhost:8443/            (skips verification)
      curl http://localhost:8080/                (redirects to HTTPS)
      curl http://127.0.0.1:9901/metrics         (internal admin listener)

MSG
./target/debug/sekisho-proxy --log-format text "$@"
