#!/usr/bin/env bash
# Kubernetes mode at scale (issue 15): a private control plane with 1,000 Ingresses (each with
# its own host, TLS Secret, Service and EndpointSlice) and 5,000 unrelated 10 KiB Secrets;
# sekisho-proxy --kubernetes against it (time to first ready, RSS, Secret renewal and Ingress
# edit to served, 20 each), the same routes in file mode, and nginx with 1,000 server blocks
# reloaded after a certificate change. Writes its section of benches/RESULTS.md.
#
#   benches/kube.sh             # full run, ≈ 10 min (+ builds); updates benches/RESULTS.md
#   benches/kube.sh --quick     # smoke test, ≈ 2 min: 100 Ingresses, 500 Secrets, 5 changes
#
# Options: --sekisho BINARY (a prebuilt release binary; SEKISHO_REV names its commit),
#          --no-build, --no-install, --results FILE (default benches/RESULTS.md; --quick
#          writes nothing unless given), --nice N (-10; 0 to turn off), and any option of
#          the program itself (`--help` after `--`), e.g. `-- --changes 40 --no-nginx`.
#
# Needs root (a network namespace for the upstreams), the control plane's binaries
# ($SEKISHO_KUBE_BIN or .cache/kube/bin, built by testing/kube/build.sh when missing) and nginx
# (nginx-light, installed when missing). Only loopback and that namespace see traffic.
# KEEP_TMP=1 keeps the work directory (configurations, the proxies' and nginx's logs).
# Not part of the test suite.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="benches/kube.sh${*:+ $*}"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

BUILD=1
INSTALL=1
QUICK=0
RESULTS=""
SEKISHO=""
NICE=-10
EXTRA=()
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --sekisho) SEKISHO=$(realpath "$2"); BUILD=0; shift ;;
        --no-build) BUILD=0 ;;
        --no-install) INSTALL=0 ;;
        --results) RESULTS=$2; shift ;;
        --nice) NICE=$2; shift ;;
        --) shift; EXTRA+=("$@"); break ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown option: $1 (options of the program go after --)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $RESULTS && $QUICK == 0 ]]; then RESULTS="$ROOT/benches/RESULTS.md"; fi

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (a network namespace for the upstreams)"

if ! command -v nginx >/dev/null; then
    ((INSTALL)) || die "nginx missing (run without --no-install, or pass -- --no-nginx)"
    log "installing nginx-light"
    # Keep the package's init script from starting nginx on port 80.
    policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    ((created)) && rm -f "$policy"
fi

KUBE_BIN=${SEKISHO_KUBE_BIN:-$ROOT/.cache/kube/bin}
if [[ ! -x $KUBE_BIN/kube-apiserver || ! -x $KUBE_BIN/etcd ]]; then
    log "building the control plane's binaries (testing/kube/build.sh)"
    SEKISHO_KUBE_BIN=$KUBE_BIN "$ROOT/testing/kube/build.sh" >&2
fi
export SEKISHO_KUBE_BIN=$KUBE_BIN

cd "$ROOT"
if ((BUILD)); then
    log "building sekisho-proxy (release)"
    cargo build --release -p sekisho-proxy --bin sekisho-proxy >&2
fi
if [[ -z $SEKISHO ]]; then
    SEKISHO="$CARGO_TARGET_DIR/release/sekisho-proxy"
    SEKISHO_REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy api Cargo.toml Cargo.lock || echo '+uncommitted changes')
fi
[[ -x $SEKISHO ]] || die "$SEKISHO not built"
export SEKISHO_REV=${SEKISHO_REV:-unknown}

# The program waits on the proxy and the API; a debug build does (and shares what the tests
# already compiled).
log "building the benchmark program"
cargo build -p sekisho-benches-kube --bin kube >&2

ARGS=(--sekisho "$SEKISHO" --command "$COMMAND")
if ((QUICK)); then ARGS+=(--sites 100 --opaque 500 --changes 5); fi
if [[ -n $RESULTS ]]; then ARGS+=(--results "$RESULTS"); fi
log "running (nice $NICE)"
exec nice -n "$NICE" "$CARGO_TARGET_DIR/debug/kube" "${ARGS[@]}" "${EXTRA[@]}"
