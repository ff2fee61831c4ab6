#!/usr/bin/env bash
# Soak (issue 17): one hour at half of the peak load, with browser logins through the dev OpenID
# provider, WebSocket sessions and tunnel streams mixed in; samples the proxy's and the agent's
# RSS and open descriptors every 10 s and reports the slopes and the errors.
#
#   benches/soak.sh            # one hour (plus about 2 min of set-up), writes benches/RESULTS.md
#   benches/soak.sh --quick    # smoke test: 60 s, 20 s warm-up; writes nothing unless --results
#
# Options: --duration SECONDS (3600), --warmup SECONDS (900: samples before it are not in the
#          slopes), --rate N (HTTP requests/s; default half of the peak measured first),
#          --session-lifetime D (10m: the logins' sessions, and with them the login state the
#          proxy keeps per live session, end within the warm-up, so that a slope is a leak and not
#          sessions still alive; 12h is the proxy's default),
#          --wait-builds SECONDS (600: the longest wait for others' compilers before the peak
#          is measured), --nice N (-10), --no-install, --no-build,
#          --bin-dir DIR (prebuilt sekisho-proxy, sekisho-agent and sekisho; SEKISHO_REV says
#          which commit), --results FILE (default benches/RESULTS.md; --quick writes nothing
#          unless given). After `--`, options for soak.py (e.g. --login-every 2).
#
# Layout: sekisho-proxy (`workers: 1`) and sekisho-agent on CPU 1; everything else on CPU 0: the
# nginx upstream, the WebSocket and TCP echo servers (echo_server.py), devidp (Node.js), the
# `sekisho tunnel --listen` CLI and the load (soak.py, which runs oha). All on 127.0.0.1, ports
# 18700-18799; everything started is stopped on exit. Not part of the test suite.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="benches/soak.sh${*:+ $*}"
BENCH="$ROOT/benches"
CACHE="$ROOT/.cache"

DURATION=3600
WARMUP=900 # the proxy keeps up to 4,096 closed tunnel streams: ~14 min at 5 streams/s
RATE=""
SESSION_LIFETIME=10m
WAIT_BUILDS=600
INSTALL=1
BUILD=1
QUICK=0
RESULTS=""
BIN_DIR=""
NICE=-10
DRIVER_ARGS=()
while (($#)); do
    case "$1" in
        --quick) QUICK=1; DURATION=60; WARMUP=20; WAIT_BUILDS=0 ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --session-lifetime) SESSION_LIFETIME=$2; shift ;;
        --wait-builds) WAIT_BUILDS=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --bin-dir) BIN_DIR=$(realpath "$2"); BUILD=0; shift ;;
        --results) RESULTS=$2; shift ;;
        --nice) NICE=$2; shift ;;
        --) shift; DRIVER_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $RESULTS && $QUICK == 0 ]]; then RESULTS="$BENCH/RESULTS.md"; fi

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Ports (127.0.0.1) and CPUs.
UPSTREAM=18701 WS_ECHO=18702 TCP_ECHO=18703 IDP=18704 HTTPS=18711 ADMIN=18712 CLI_PORT=18721
PORTS=("$UPSTREAM" "$WS_ECHO" "$TCP_ECHO" "$IDP" "$HTTPS" "$ADMIN" "$CLI_PORT")
SERVER_CPU=1 CLIENT_CPU=0

install_tools() {
    local missing=() p
    for p in nginx:nginx-light openssl:openssl python3:python3 taskset:util-linux curl:curl \
        node:nodejs npm:npm; do
        command -v "${p%%:*}" >/dev/null || missing+=("${p#*:}")
    done
    if ((${#missing[@]})); then
        ((INSTALL)) || die "missing ${missing[*]} (run without --no-install)"
        log "installing ${missing[*]}"
        local policy=/usr/sbin/policy-rc.d created=0 # no package's init script may start nginx
        [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        ((created)) && rm -f "$policy"
    fi
    export PATH="$CACHE/bin:$PATH"
    if ! command -v oha >/dev/null; then
        ((INSTALL)) || die "oha missing (run without --no-install)"
        log "installing oha with cargo into $CACHE (several minutes, once)"
        cargo install oha --locked --root "$CACHE" >&2
    fi
    if [[ ! -d $ROOT/testing/devidp/node_modules ]]; then
        ((INSTALL)) || die "devidp's npm packages are missing (run without --no-install)"
        log "devidp: npm ci"
        (cd "$ROOT/testing/devidp" && npm ci --no-audit --no-fund --silent) >&2
    fi
    if ((BUILD)); then
        log "building sekisho-proxy, sekisho-agent and sekisho (release)"
        (cd "$ROOT" && cargo build --release -p sekisho-proxy -p sekisho-agent -p sekisho-cli >&2)
    fi
    local dir=${BIN_DIR:-$ROOT/target/release}
    PROXY="$dir/sekisho-proxy" AGENT="$dir/sekisho-agent" CLI="$dir/sekisho"
    if [[ -z $BIN_DIR ]]; then
        SEKISHO_REV=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- \
            proxy agent tunnel-cli wire identity Cargo.toml Cargo.lock || echo '+uncommitted changes')
    fi
    for p in "$PROXY" "$AGENT" "$CLI"; do [[ -x $p ]] || die "$p not built"; done
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
declare -A PID=()
T=""

cleanup() {
    local pid
    # The load first, so that it does not count the servers' going away as errors.
    if [[ -n ${PID[driver]:-} ]]; then
        kill -TERM "${PID[driver]}" 2>/dev/null || true
        wait "${PID[driver]}" 2>/dev/null || true
        unset "PID[driver]"
    fi
    for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PID[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PID=()
    if [[ -n $T && -d $T && -z ${KEEP_TMP:-} ]]; then rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

wait_port() {
    local port=$1
    for _ in $(seq 150); do listening "$port" && return 0; sleep 0.1; done
    return 1
}

# start NAME PORT CPU COMMAND...: runs COMMAND in the background, stderr in $T/NAME.err, and
# waits (15 s at most) until PORT listens; PORT 0 waits for nothing.
start() {
    local name=$1 port=$2 cpu=$3
    shift 3
    taskset -c "$cpu" "$@" >"$T/$name.out" 2>"$T/$name.err" &
    PID[$name]=$!
    if ((port)); then wait_port "$port" || die "$name did not listen on $port (see $T/$name.err)"; fi
}

metric() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" \
        | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

# Whether a compiler or linker (Rust, C, Go) runs: others' builds share the two CPUs.
# shellcheck disable=SC2009 # pgrep refuses patterns longer than 15 characters
compiling() { ps -eo comm= | grep -qxE 'rustc|cc1|cc1plus|cc|ld|ld.bfd|ld.gold|lld|collect2|compile|link|asm|cgo'; }

# Waits until no compiler runs, WAIT_BUILDS seconds at most.
wait_quiet() {
    local start=$SECONDS
    while compiling && ((SECONDS - start < WAIT_BUILDS)); do
        ((SECONDS - start)) || log "waiting for others' builds to finish (at most ${WAIT_BUILDS}s)"
        sleep 5
    done
    if compiling; then log "a build is running: measuring the peak anyway"; fi
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
write_configs() {
    # A throwaway CA and one leaf for every name the proxy serves.
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2)
    openssl req -x509 "${ec[@]}" -keyout "$T/ca.key" -out "$T/ca.crt" -subj "/CN=sekisho soak CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl req -x509 "${ec[@]}" -keyout "$T/tls.key" -out "$T/tls.crt" -subj "/CN=localhost" \
        -CA "$T/ca.crt" -CAkey "$T/ca.key" -addext "basicConstraints=CA:FALSE" \
        -addext "subjectAltName=DNS:localhost,DNS:auth.localhost,DNS:echo.localhost,DNS:proxy.localhost,IP:127.0.0.1" \
        -addext "extendedKeyUsage=serverAuth" 2>/dev/null

    mkdir -p "$T/nginx-tmp"
    cat >"$T/upstream.conf" <<EOF
daemon off;
worker_processes 1;
pid $T/upstream.pid;
error_log $T/upstream.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $T/nginx-tmp;
    server {
        listen 127.0.0.1:$UPSTREAM backlog=4096;
        location / { return 200 "hello world\n"; }
    }
}
EOF

    if ! { "$PROXY" keys session "$T/session-keys" && "$PROXY" keys signing "$T/signing-keys.pem"; } \
        >"$T/keys.out" 2>&1; then
        cat "$T/keys.out" >&2
        die "sekisho-proxy keys failed"
    fi
    # All of init's output, then its first line: a pipe closed early (`| head -n1`) makes it abort.
    AGENT_KEY=$("$AGENT" init --key "$T/agent.key" --name soak 2>/dev/null) || die "sekisho-agent init failed"
    AGENT_KEY=${AGENT_KEY%%$'\n'*}
    [[ -n $AGENT_KEY ]] || die "sekisho-agent init printed no key"
    printf 'sekisho-dev-secret' >"$T/idp-secret"

    # The load's cookie is minted once (dev-session, 48 h) and never refreshed: the idle timeout
    # outlasts the run. Logins get --session-lifetime.
    cat >"$T/proxy.yaml" <<EOF
listen:
  https: 127.0.0.1:$HTTPS
  admin: 127.0.0.1:$ADMIN
workers: 1
access_log: false
tls:
  certificates:
    - {cert: $T/tls.crt, key: $T/tls.key}
limits: {max_connections: 50000}
identity:
  auth_host: auth.localhost
  session_keys_file: $T/session-keys
  signing_keys_file: $T/signing-keys.pem
  session_idle_timeout: 48h
  session_lifetime: $SESSION_LIFETIME
  dangerous_allow_http_issuers: true
  providers:
    - {name: devidp, issuer: "http://127.0.0.1:$IDP", client_id: sekisho, client_secret_file: $T/idp-secret}
policies:
  staff: {allow: [{group: staff}]}
agents:
  soak: {public_keys: ["$AGENT_KEY"]}
upstreams:
  web: {endpoints: ["http://127.0.0.1:$UPSTREAM"]}
  ws: {endpoints: ["http://127.0.0.1:$WS_ECHO"]}
hosts:
  - host: localhost
    policy: staff
    paths:
      - {path: /, type: Prefix, upstream: web}
      - {path: /ws, type: Prefix, upstream: ws}
tunnels:
  - {host: echo.localhost, policy: staff, agent: soak, target: "127.0.0.1:$TCP_ECHO"}
EOF
    cat >"$T/agent.yaml" <<EOF
name: soak
key_file: $T/agent.key
proxies:
  - {url: "https://proxy.localhost:$HTTPS", address: "127.0.0.1:$HTTPS"}
ca_file: $T/ca.crt
allow:
  tcp: ["127.0.0.1:$TCP_ECHO"]
EOF
    "$PROXY" check-config "$T/proxy.yaml" >/dev/null 2>&1 \
        || { "$PROXY" check-config "$T/proxy.yaml" >&2 || true; die "invalid proxy config"; }
    "$AGENT" check-config "$T/agent.yaml" >/dev/null 2>&1 \
        || { "$AGENT" check-config "$T/agent.yaml" >&2 || true; die "invalid agent config"; }
    COOKIE=$("$PROXY" --config "$T/proxy.yaml" dev-session --host localhost --subject soak \
        --email soak@uniqe.example --group staff --lifetime 48h) || die "sekisho-proxy dev-session failed"
    TOKEN=$("$PROXY" --config "$T/proxy.yaml" dev-token --subject soak --email soak@uniqe.example \
        --group staff --lifetime 48h) || die "sekisho-proxy dev-token failed"
}

start_all() {
    start upstream $UPSTREAM $CLIENT_CPU nginx -e "$T/upstream.err" -c "$T/upstream.conf"
    start ws-echo $WS_ECHO $CLIENT_CPU python3 "$BENCH/echo_server.py" --websocket --port $WS_ECHO
    start tcp-echo $TCP_ECHO $CLIENT_CPU python3 "$BENCH/echo_server.py" --port $TCP_ECHO
    start devidp $IDP $CLIENT_CPU node "$ROOT/testing/devidp/server.mjs" --port $IDP --log-level quiet \
        --redirect-uri "https://auth.localhost:$HTTPS/.sekisho/callback"
    start proxy $HTTPS $SERVER_CPU "$PROXY" --config "$T/proxy.yaml" --log-format text
    RUST_LOG=warn start agent 0 $SERVER_CPU "$AGENT" run --config "$T/agent.yaml"
    for _ in $(seq 150); do (($(metric sekisho_agents_connected) >= 1)) && break; sleep 0.2; done
    (($(metric sekisho_agents_connected) >= 1)) || die "the agent did not connect (see $T/agent.err, $T/proxy.err)"
    SEKISHO_TOKEN=$TOKEN start cli $CLI_PORT $CLIENT_CPU "$CLI" --ca "$T/ca.crt" \
        --connect-to 127.0.0.1:$HTTPS tunnel --listen 127.0.0.1:$CLI_PORT "echo.localhost:$HTTPS"
}

# The protected page answers 200 with the cookie and sends a browser without one to log in.
check_route() {
    local curl=(curl -sS --max-time 5 --cacert "$T/ca.crt" --resolve "localhost:$HTTPS:127.0.0.1")
    local body code
    body=$("${curl[@]}" -H "Cookie: __Host-sekisho=$COOKIE" "https://localhost:$HTTPS/") \
        || die "the protected route failed with the session cookie"
    [[ $body == "hello world" ]] || die "the protected route answered '$body' with the session cookie"
    code=$("${curl[@]}" -o /dev/null -w '%{http_code}' -H 'Accept: text/html' "https://localhost:$HTTPS/") || true
    [[ $code == 302 ]] || die "without a session the protected route answered ${code:-nothing}, expected 302"
}

machine_info() {
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "command=$COMMAND"
        echo "nproc=$(nproc)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
        echo "kernel=$(uname -r)"
        echo "memory=$(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
        echo "sekisho=$("$PROXY" --version), $("$AGENT" --version), $("$CLI" --version) @ ${SEKISHO_REV:-unknown commit}"
        echo "rustc=$(rustc -V 2>/dev/null || echo unknown)"
        echo "oha=$(oha --version)"
        echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "node=$(node --version), devidp on oidc-provider $(node -p 'require("'"$ROOT"'/testing/devidp/node_modules/oidc-provider/package.json").version')"
        echo "python=$(python3 -V)"
        echo "session=$SESSION_LIFETIME"
        echo "pinning=sekisho-proxy (\`workers: 1\`) and sekisho-agent on CPU $SERVER_CPU, everything else (upstream, echo servers, devidp, CLI, load) on CPU $CLIENT_CPU; nice $(ps -o ni= -p $$ | tr -d ' ')."
    } >"$T/machine.txt"
}

main() {
    install_tools
    ulimit -n "$(ulimit -Hn)"
    if ((NICE != 0)); then renice -n "$NICE" -p $$ >/dev/null || log "renice failed; running at nice 0"; fi
    local port
    for port in "${PORTS[@]}"; do listening "$port" && die "port $port is in use"; done
    T=$(mktemp -d /tmp/sekisho-soak.XXXXXX)
    chmod 755 "$T"
    log "work dir $T"
    write_configs
    machine_info
    start_all
    check_route
    local driver=(taskset -c "$CLIENT_CPU" python3 "$BENCH/soak.py" --proxy-port "$HTTPS"
        --cafile "$T/ca.crt" --cookie "$COOKIE" --tunnel-port "$CLI_PORT" --oha "$(command -v oha)")
    "${driver[@]}" --check || die "a login, WebSocket session or tunnel stream failed (see $T/*.err)"
    ((WAIT_BUILDS > 0)) && [[ -z $RATE ]] && wait_quiet
    log "soak: $DURATION s (warm-up $WARMUP s)"
    # In the background, so that the exit trap stops it (and the oha it runs) with the rest.
    "${driver[@]}" --duration "$DURATION" --warmup "$WARMUP" ${RATE:+--rate "$RATE"} \
        --pid "proxy:${PID[proxy]}" --pid "agent:${PID[agent]}" --pid "cli:${PID[cli]}" \
        --metrics "http://127.0.0.1:$ADMIN/metrics" --samples "$T/samples.jsonl" \
        --machine "$T/machine.txt" ${RESULTS:+--write "$RESULTS"} "${DRIVER_ARGS[@]}" &
    PID[driver]=$!
    local rc=0
    wait "${PID[driver]}" || rc=$?
    unset "PID[driver]"
    if ((rc == 1)); then log "a goal was not met (see the Goals table above; KEEP_TMP=1 keeps $T)"; fi
    return "$rc"
}

main
