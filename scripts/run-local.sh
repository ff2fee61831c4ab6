#!/usr/bin/env bash
# Runs the gate locally on the embedded default (deploy/examples/local.yaml): a sample upstream
# on 127.0.0.1:8081, the development OpenID provider (devidp) on http://127.0.0.1:9000, and
# sekisho-proxy on https://localhost:8443 (login at https://auth.localhost:8443) with a
# generated development certificate. No cloud account needed. Ctrl-C stops all three.
# It also builds the CLI (`sekisho`, package sekisho-cli) and prints the lines that log it in
# and reach this machine's sshd through the gate (`ssh.localhost`).
# Needs Rust and Node.js with npm (both on the project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building sekisho-proxy, the sample upstream and the sekisho CLI" >&2
cargo build -p sekisho-proxy --bin sekisho-proxy --example sample_upstream
cargo build -p sekisho-cli --bin sekisho

echo "==> installing devidp's npm packages (npm ci)" >&2
(cd testing/devidp && npm ci --no-audit --no-fund --silent)

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

./target/debug/examples/sample_upstream 127.0.0.1:8081 &
pids+=($!)

ready=$(mktemp)
node testing/devidp/server.mjs --port 9000 --log-level quiet >"$ready" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '"ready":true' "$ready" 2>/dev/null && break
  sleep 0.1
done
grep -q '"ready":true' "$ready" || { echo "devidp did not start (is port 9000 free?)" >&2; exit 1; }
rm -f "$ready"

# Where the proxy keeps its development CA (as sekisho-proxy chooses it; if that directory
# cannot be written, the proxy's log names the one it used instead).
if [[ -n "${XDG_STATE_HOME:-}" ]]; then dir="$XDG_STATE_HOME/sekisho/dev-ca"
elif [[ -n "${HOME:-}" ]]; then dir="$HOME/.local/state/sekisho/dev-ca"
else dir="${TMPDIR:-/tmp}/sekisho-dev-ca-${USER:-user}"; fi
ca="${SEKISHO_DEV_CA_DIR:-$dir}/ca.pem"
cli="$PWD/target/debug/sekisho"

me=$(id -un)

cat >&2 <<MSG

==> starting sekisho-proxy on the embedded local example
    The development CA (the same across restarts; trust it once, or accept the warning):
      $ca
    In a browser: https://localhost:8443/, and sign in at the dev IdP as
      alice@uniqe.example / password     group staff: allowed
      carol@elsewhere.example / password no groups:   signed in, but denied (403 page)
    Also:
      https://localhost:8443/public            public, no login
      https://localhost:8443/.sekisho/me       who am I
      https://localhost:8443/.sekisho/logout   sign out
      curl --cacert $ca -H 'Accept: application/json' https://localhost:8443/
                                               401 with a login URL
      curl http://127.0.0.1:9901/metrics       internal admin listener
    The CLI, then ssh to this machine through the gate (ssh.localhost; needs sshd on port 22):
      $cli login --ca $ca localhost:8443
      ssh -o ProxyCommand="$cli tunnel %h:8443" $me@ssh.localhost
      $cli ssh-config      # the same as lines for ~/.ssh/config

MSG
./target/debug/sekisho-proxy --log-format text "$@"
