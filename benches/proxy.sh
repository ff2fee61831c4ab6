#!/usr/bin/env bash
# Side-by-side reverse-proxy benchmark (issue 2): direct, nginx, HAProxy and sekisho-proxy
# (access log off and on; and auth on, with a valid session cookie) in front of one
# fixed-response upstream, in interleaved rounds.
#
#   benches/proxy.sh            # full run, about 13 minutes, writes benches/RESULTS.md
#   benches/proxy.sh --quick    # smoke test: 1 round, short runs, 2,000 idle connections
#
# Options: --rounds N (3), --duration SECONDS (5), --idle-conns N (10000),
#          --idle-tls-conns N (2000), --nice N (-10), --no-install, --no-build,
#          --sekisho BINARY (a prebuilt binary instead of building the work tree; SEKISHO_REV
#          says which commit it is), --results FILE (default benches/RESULTS.md; --quick
#          writes nothing unless given).
#
# Layout: the upstream (a separate nginx) and every proxy are pinned to CPU 1, the load
# generators (wrk, oha, the idle-connection client) to CPU 0. Everything listens on 127.0.0.1,
# ports 18000-18599, and is stopped on exit. Not part of the test suite.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="benches/proxy.sh${*:+ $*}"
BENCH="$ROOT/benches"
CACHE="$ROOT/.cache"

ROUNDS=3
DURATION=5
IDLE_CONNS=10000
IDLE_TLS_CONNS=2000 # Python's TLS handshakes make 10,000 take minutes per proxy
INSTALL=1
BUILD=1
QUICK=0
RESULTS=""
SEKISHO=""
CONNS=32
NICE=-10
while (($#)); do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; DURATION=2; IDLE_CONNS=2000; IDLE_TLS_CONNS=500 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --idle-conns) IDLE_CONNS=$2; shift ;;
        --idle-tls-conns) IDLE_TLS_CONNS=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --sekisho) SEKISHO=$(realpath "$2"); BUILD=0; shift ;;
        --results) RESULTS=$2; shift ;;
        --nice) NICE=$2; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $RESULTS && $QUICK == 0 ]]; then RESULTS="$BENCH/RESULTS.md"; fi

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
install_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        ((INSTALL)) || die "missing ${missing[*]} (run without --no-install)"
        log "installing ${missing[*]}"
        # Keep the packages' init scripts from starting nginx/HAProxy on ports 80/443.
        local policy=/usr/sbin/policy-rc.d created=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        ((created)) && rm -f "$policy"
    fi
    export PATH="$CACHE/bin:$PATH"
    if ! command -v oha >/dev/null; then
        ((INSTALL)) || die "oha missing (run without --no-install)"
        log "installing oha with cargo into $CACHE (takes several minutes)"
        cargo install oha --locked --root "$CACHE" >&2
    fi
    if ((BUILD)); then
        log "building sekisho-proxy (release)"
        (cd "$ROOT" && cargo build --release -p sekisho-proxy >&2)
    fi
    if [[ -z $SEKISHO ]]; then
        SEKISHO="$ROOT/target/release/sekisho-proxy"
        SEKISHO_REV=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- proxy Cargo.toml Cargo.lock || echo '+uncommitted changes')
    fi
    [[ -x $SEKISHO ]] || die "$SEKISHO not built"
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
declare -A PID=()
T=""

cleanup() {
    local name pid
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PID=()
    if [[ -n $T && -d $T && -z ${KEEP_TMP:-} ]]; then rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The pid and its descendants (nginx: master and worker).
tree_pids() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

# utime + stime of a process tree, in clock ticks; with --sys, stime alone (kernel time).
cpu_ticks() {
    local total=0 p stat sys_only=0
    if [[ $1 == --sys ]]; then sys_only=1; shift; fi
    for p in $(tree_pids "$1"); do
        stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        if ((sys_only)); then total=$((total + f[12])); else total=$((total + f[11] + f[12])); fi
    done
    echo "$total"
}

wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Peers and their ports: http https [admin]. sekisho-auth is sekisho with auth on: every request
# carries a valid session cookie. It has no idle-memory row (the idle client sends no cookie).
PEERS=(direct nginx haproxy sekisho sekisho-log sekisho-auth)
PROXIES=(nginx haproxy sekisho sekisho-log sekisho-auth)
MEM_PROXIES=(nginx haproxy sekisho sekisho-log)
declare -A HTTP_PORT=([direct]=18001 [nginx]=18101 [haproxy]=18201 [sekisho]=18302 [sekisho-log]=18402
    [sekisho-auth]=18502)
declare -A HTTPS_PORT=([nginx]=18102 [haproxy]=18202 [sekisho]=18301 [sekisho-log]=18401
    [sekisho-auth]=18501)
COOKIE="" # the sekisho-auth session cookie's value, minted by write_configs

# Request headers for a peer, one argument per line (wrk, oha and curl all take `-H`).
headers() {
    printf '%s\n' -H 'Host: localhost'
    if [[ $1 == sekisho-auth ]]; then printf '%s\n' -H "Cookie: __Host-sekisho=$COOKIE"; fi
}

start() {
    local name=$1
    case "$name" in
        upstream) taskset -c 1 nginx -e "$T/upstream.err" -c "$T/upstream.conf" \
                      >"$T/upstream.out" 2>&1 & ;;
        nginx) taskset -c 1 nginx -e "$T/nginx.err" -c "$T/nginx.conf" >"$T/nginx.out" 2>&1 & ;;
        haproxy) taskset -c 1 haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.out" 2>&1 & ;;
        sekisho|sekisho-log|sekisho-auth)
            # stdout (the access log) is appended to a file, as a log collector would.
            taskset -c 1 "$SEKISHO" --config "$T/$name.yaml" --log-format text \
                >>"$T/$name.access.log" 2>"$T/$name.err" & ;;
    esac
    PID[$name]=$!
    local port=${HTTP_PORT[$name]:-18001}
    wait_port "$port" || die "$name did not listen on $port (see $T/$name.*)"
    if [[ -n ${HTTPS_PORT[$name]:-} ]]; then wait_port "${HTTPS_PORT[$name]}" || die "$name: no TLS port"; fi
}

stop() {
    local name=$1 pid=${PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PID[$name]"
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
write_configs() {
    # One ECDSA P-256 CA and a leaf for localhost / 127.0.0.1, shared by the three proxies.
    openssl ecparam -name prime256v1 -genkey -noout -out "$T/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$T/ca.key" -subj "/CN=sekisho bench CA" -days 2 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -out "$T/ca.crt" 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out "$T/leaf.ec.key" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$T/leaf.ec.key" -out "$T/tls.key"
    openssl req -new -key "$T/tls.key" -subj "/CN=localhost" -out "$T/leaf.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        >"$T/leaf.ext"
    openssl x509 -req -in "$T/leaf.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial \
        -days 2 -extfile "$T/leaf.ext" -out "$T/tls.crt" 2>/dev/null
    cat "$T/tls.crt" "$T/tls.key" >"$T/haproxy.pem"

    mkdir -p "$T/www" "$T/nginx-tmp"
    head -c 16384 /dev/zero | tr '\0' 'x' >"$T/www/16k"

    # The upstream: fixed responses, 12 bytes at /, 16 KiB at /16k.
    cat >"$T/upstream.conf" <<EOF
daemon off;
worker_processes 1;
pid $T/upstream.pid;
error_log $T/upstream.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $T/nginx-tmp/up-body;
    open_file_cache max=16;
    server {
        listen 127.0.0.1:18001 backlog=4096;
        location = /16k { root $T/www; }
        location / { return 200 "hello world\n"; }
    }
}
EOF

    cat >"$T/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $T/nginx.pid;
error_log $T/nginx.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 16000; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $T/nginx-tmp/body;
    proxy_temp_path $T/nginx-tmp/proxy;
    upstream bench {
        server 127.0.0.1:18001;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:18101 backlog=4096;
        listen 127.0.0.1:18102 ssl backlog=4096;
        ssl_certificate $T/tls.crt;
        ssl_certificate_key $T/tls.key;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF

    cat >"$T/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HAPROXY_MAXCONN
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always
    maxconn $HAPROXY_MAXCONN
frontend fe
    bind 127.0.0.1:18201
    bind 127.0.0.1:18202 ssl crt $T/haproxy.pem
    option forwardfor
    default_backend be
backend be
    server up 127.0.0.1:18001
EOF

    # sekisho-auth's key files, made by the binary under test.
    "$SEKISHO" keys session "$T/session-keys" >"$T/keys.out" 2>&1 \
        || { cat "$T/keys.out" >&2; die "sekisho keys session failed"; }
    "$SEKISHO" keys signing "$T/signing-keys.pem" >"$T/keys.out" 2>&1 \
        || { cat "$T/keys.out" >&2; die "sekisho keys signing failed"; }

    local name log https http admin access identity
    for name in sekisho sekisho-log sekisho-auth; do
        if [[ $name == sekisho-log ]]; then log=true; else log=false; fi
        access="public: true" identity=""
        if [[ $name == sekisho-auth ]]; then
            access="policy: bench"
            identity="identity:
  auth_host: auth.localhost
  session_keys_file: $T/session-keys
  signing_keys_file: $T/signing-keys.pem
policies:
  bench: {allow: [{group: staff}]}"
        fi
        https=${HTTPS_PORT[$name]} http=${HTTP_PORT[$name]} admin=$((HTTPS_PORT[$name] + 2))
        cat >"$T/$name.yaml" <<EOF
listen:
  https: 127.0.0.1:$https
  http: 127.0.0.1:$http
  http_mode: serve
  admin: 127.0.0.1:$admin
workers: 1
access_log: $log
tls:
  certificates:
    - {cert: $T/tls.crt, key: $T/tls.key}
limits: {max_connections: 50000, idle_timeout: 300s}
$identity
upstreams:
  bench:
    endpoints: ["http://127.0.0.1:18001"]
hosts:
  - host: localhost
    $access
    paths: [{path: /, type: Prefix, upstream: bench}]
EOF
        "$SEKISHO" check-config "$T/$name.yaml" >/dev/null 2>&1 \
            || { "$SEKISHO" check-config "$T/$name.yaml"; die "invalid $name config"; }
    done
    # A session for localhost in the policy's group, valid for longer than the run.
    COOKIE=$("$SEKISHO" --config "$T/sekisho-auth.yaml" dev-session --host localhost \
        --subject bench --email bench@example.com --group staff --lifetime 24h) \
        || die "sekisho dev-session failed"
    [[ -n $COOKIE ]] || die "sekisho dev-session printed no cookie"
    nginx -t -q -e "$T/check.err" -c "$T/nginx.conf" || die "invalid nginx config"
    haproxy -c -q -f "$T/haproxy.cfg" || die "invalid haproxy config"
}

# ---------------------------------------------------------------------------------------------
# Cases and measurements
# ---------------------------------------------------------------------------------------------
CASES=(http-12B http-16KiB tls-12B)

# The URL a peer is loaded at for a case. `direct` has no TLS: its TLS row is plain HTTP.
url() {
    local case=$1 peer=$2 path=/
    [[ $case == *16KiB ]] && path=/16k
    if [[ $case == tls-* && $peer != direct ]]; then
        echo "https://localhost:${HTTPS_PORT[$peer]}$path"
    else
        echo "http://127.0.0.1:${HTTP_PORT[$peer]}$path"
    fi
}

check_peer() {
    local case=$1 peer=$2 u body hdrs
    u=$(url "$case" "$peer")
    mapfile -t hdrs < <(headers "$peer")
    body=$(curl -sS --fail --max-time 5 --cacert "$T/ca.crt" \
        --resolve "localhost:${HTTPS_PORT[$peer]:-1}:127.0.0.1" "${hdrs[@]}" "$u" | wc -c)
    local want=12
    [[ $case == *16KiB ]] && want=16384
    [[ $body == "$want" ]] || die "$peer $case: got $body bytes from $u, expected $want"
    if [[ $peer == sekisho-auth ]]; then
        # Without the cookie the request must be refused (401) or sent to log in (302): the row
        # must measure auth letting a valid session through, not a public route or an error page.
        local code
        code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$T/ca.crt" \
            --resolve "localhost:${HTTPS_PORT[$peer]}:127.0.0.1" -H 'Host: localhost' "$u") || true
        [[ $code == 401 || $code == 302 ]] \
            || die "$peer $case: $u answered ${code:-nothing} without a session cookie, expected 401 or 302"
    fi
}

CLK_TCK=$(getconf CLK_TCK)

# Saturation: wrk for DURATION seconds; records requests/s and the proxy's CPU-µs per request.
saturate() {
    local case=$1 peer=$2 round=$3 u pid before after out reqs rps errs lines=""
    u=$(url "$case" "$peer")
    pid=${PID[$peer]:-}
    [[ $peer == direct ]] && pid=""
    local sbefore safter
    [[ -n $pid ]] && before=$(cpu_ticks "$pid") && sbefore=$(cpu_ticks --sys "$pid")
    local ubefore
    ubefore=$(cpu_ticks "${PID[upstream]}")
    local hdrs
    mapfile -t hdrs < <(headers "$peer")
    out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdrs[@]}" "$u")
    local uafter
    uafter=$(cpu_ticks "${PID[upstream]}")
    [[ -n $pid ]] && after=$(cpu_ticks "$pid") && safter=$(cpu_ticks --sys "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {gsub(/,/,""); n+=$4+$6+$8+$10} END {print n+0}' <<<"$out")
    [[ -n $reqs && $reqs -gt 0 ]] || { log "wrk output for $peer $case:"; echo "$out" >&2; die "no requests"; }
    local cpu=NA kcpu=NA
    if [[ -n $pid ]]; then
        cpu=$(awk -v a="$before" -v b="$after" -v n="$reqs" -v hz="$CLK_TCK" \
            'BEGIN {printf "%.3f", (b - a) * 1e6 / hz / n}')
        kcpu=$(awk -v a="$sbefore" -v b="$safter" -v n="$reqs" -v hz="$CLK_TCK" \
            'BEGIN {printf "%.3f", (b - a) * 1e6 / hz / n}')
    fi
    local ucpu
    ucpu=$(awk -v a="$ubefore" -v b="$uafter" -v n="$reqs" -v hz="$CLK_TCK" \
        'BEGIN {printf "%.3f", (b - a) * 1e6 / hz / n}')
    if [[ $peer == sekisho-log ]]; then
        lines=$(wc -l <"$T/sekisho-log.access.log")
        : >"$T/sekisho-log.access.log"
    fi
    printf 'sat\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$case" "$peer" "$round" "$rps" "$reqs" "$cpu" "$errs" "$ucpu" "${lines:-NA}" "$kcpu" >>"$T/results.tsv"
    log "  sat  $case $peer: $rps req/s, proxy $cpu CPU-µs/req ($kcpu in the kernel), upstream $ucpu, errors $errs${lines:+, log lines $lines}"
}

# Fixed rate: oha at RATE req/s with coordinated-omission correction; p50/p99.
latency() {
    local case=$1 peer=$2 round=$3 rate=$4 u json hdrs
    u=$(url "$case" "$peer")
    mapfile -t hdrs < <(headers "$peer")
    taskset -c 0 oha --no-tui --output-format json -z "${DURATION}s" -c "$CONNS" \
        -q "$rate" --latency-correction "${hdrs[@]}" \
        --cacert "$T/ca.crt" "$u" >"$T/oha.json" 2>"$T/oha.err" \
        || { cat "$T/oha.err" >&2; die "oha failed for $peer $case"; }
    python3 - "$T/oha.json" "$case" "$peer" "$round" "$rate" >>"$T/results.tsv" <<'EOF'
import json, sys
path, case, peer, rnd, rate = sys.argv[1:6]
d = json.load(open(path))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
# Requests cut off when -z ends are not failures.
failed = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
if failed:
    print(f"oha errors for {peer} {case}: {failed}", file=sys.stderr)
errors = sum(failed.values()) + sum(v for k, v in codes.items() if k != "200")
print("lat\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%d" % (
    case, peer, rnd, rate, s["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6, errors))
EOF
    if [[ $peer == sekisho-log ]]; then : >"$T/sekisho-log.access.log"; fi
    log "  lat  $case $peer @ $rate/s: $(tail -n1 "$T/results.tsv" | cut -f6-9 | tr '\t' ' ') (achieved p50µs p99µs errors)"
}

# Idle keep-alive connections: RSS delta per connection, on a freshly started proxy.
idle_memory() {
    local variant=$1 peer=$2 port json tls=() count=$IDLE_CONNS
    if [[ $variant == tls ]]; then
        port=${HTTPS_PORT[$peer]}
        count=$IDLE_TLS_CONNS
        tls=(--tls --cafile "$T/ca.crt")
    else
        port=${HTTP_PORT[$peer]}
    fi
    stop "$peer"
    start "$peer"
    # One request first, so that lazily built per-process state (upstream pool, TLS session
    # machinery) is not counted as per-connection cost.
    check_peer "$([[ $variant == tls ]] && echo tls-12B || echo http-12B)" "$peer"
    sleep 0.5
    taskset -c 0 python3 "$BENCH/idle_conns.py" --port "$port" --pid "${PID[$peer]}" \
        --count "$count" "${tls[@]}" --deadline 150 >"$T/idle.json" || true
    json=$(cat "$T/idle.json")
    [[ -n $json ]] || die "idle client failed for $peer"
    python3 - "$T/idle.json" "$variant" "$peer" >>"$T/results.tsv" <<'EOF'
import json, sys
path, variant, peer = sys.argv[1:4]
d = json.load(open(path))
if "error" in d:
    raise SystemExit(f"idle client for {peer}: {d['error']}")
print("mem\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%d" % (variant, peer, d["bytes_per_conn"], d["open"],
      d["errors"], d["alive_sampled"], d["rss_before_kib"], d["rss_after_kib"]))
EOF
    log "  mem  $variant $peer: $json"
    # Let the proxy close the client's connections before the next peer starts.
    sleep 1
}

machine_info() {
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "command=$COMMAND"
        echo "nproc=$(nproc)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
        echo "kernel=$(uname -r)"
        echo "memory=$(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
        echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "haproxy=$(haproxy -v | head -n1)"
        echo "wrk=$(wrk -v 2>&1 | head -n1)"
        echo "oha=$(oha --version)"
        echo "python=$(python3 -V)"
        echo "openssl=$(openssl version)"
        echo "sekisho=$("$SEKISHO" --version) @ ${SEKISHO_REV:-unknown commit}"
        echo "rustc=$(rustc -V)"
        echo "rounds=$ROUNDS"
        echo "duration=$DURATION"
        echo "conns=$CONNS"
        echo "nice=$(ps -o ni= -p $$ | tr -d ' ')"
        echo "idle_conns=$IDLE_CONNS"
        echo "idle_tls_conns=$IDLE_TLS_CONNS"
    } >"$T/machine.txt"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
main() {
    local started=$SECONDS
    install_tools
    ulimit -n "$(ulimit -Hn)"
    # Everything started from here (servers and load generators) inherits a higher priority,
    # so that other work on a shared machine preempts the measured processes less often.
    if ((NICE != 0)); then renice -n "$NICE" -p $$ >/dev/null || log "renice failed; running at nice 0"; fi
    # HAProxy refuses to start unless the open-file limit covers 2 fds per connection of its
    # maxconn, and root may not raise the hard limit here (20,000 on the project's machines):
    # the idle-connection count is capped so that every proxy gets the same number.
    HAPROXY_MAXCONN=$((($(ulimit -n) - 100) / 2))
    if ((IDLE_CONNS > HAPROXY_MAXCONN - 50)); then
        log "open-file limit $(ulimit -n): idle connections capped at $((HAPROXY_MAXCONN - 50)) (HAProxy maxconn $HAPROXY_MAXCONN)"
        IDLE_CONNS=$((HAPROXY_MAXCONN - 50))
    fi
    local port
    for port in 18001 18101 18102 18201 18202 18301 18302 18303 18401 18402 18403 18501 18502 18503; do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then die "port $port is in use"; fi
    done

    T=$(mktemp -d /tmp/sekisho-bench.XXXXXX)
    chmod 755 "$T" # nginx workers run as www-data and serve $T/www
    log "work dir $T"
    : >"$T/results.tsv"
    write_configs
    machine_info
    start upstream
    local peer case round i
    for peer in "${PROXIES[@]}"; do start "$peer"; done
    for case in "${CASES[@]}"; do
        for peer in "${PEERS[@]}"; do check_peer "$case" "$peer"; done
    done

    log "warm-up"
    local hdrs
    for case in "${CASES[@]}"; do
        for peer in "${PEERS[@]}"; do
            mapfile -t hdrs < <(headers "$peer")
            taskset -c 0 wrk -t1 -c"$CONNS" -d1s "${hdrs[@]}" "$(url "$case" "$peer")" >/dev/null
        done
    done
    : >"$T/sekisho-log.access.log"

    local n=${#PEERS[@]}
    for ((round = 1; round <= ROUNDS; round++)); do
        log "saturation round $round/$ROUNDS"
        for case in "${CASES[@]}"; do
            for ((i = 0; i < n; i++)); do
                saturate "$case" "${PEERS[(i + round - 1) % n]}" "$round"
            done
        done
    done

    # The fixed rate of each case: half of nginx's median peak in this run.
    declare -A RATE=()
    for case in "${CASES[@]}"; do
        RATE[$case]=$(awk -F'\t' -v c="$case" '$1 == "sat" && $2 == c && $3 == "nginx" {print $5}' \
            "$T/results.tsv" | sort -g | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%d", m / 2}')
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        log "fixed-rate round $round/$ROUNDS"
        for case in "${CASES[@]}"; do
            for ((i = 0; i < n; i++)); do
                latency "$case" "${PEERS[(i + round - 1) % n]}" "$round" "${RATE[$case]}"
            done
        done
    done

    log "idle connections ($IDLE_CONNS plain, $IDLE_TLS_CONNS TLS per proxy)"
    for variant in http tls; do
        for peer in "${MEM_PROXIES[@]}"; do idle_memory "$variant" "$peer"; done
    done

    cleanup_servers
    echo "elapsed=$((SECONDS - started))" >>"$T/machine.txt"
    python3 "$BENCH/report.py" "$T/results.tsv" "$T/machine.txt" ${RESULTS:+--write "$RESULTS"}
    if [[ -n $RESULTS ]]; then log "wrote $RESULTS"; fi
}

cleanup_servers() {
    local name
    for name in "${!PID[@]}"; do stop "$name"; done
}

main
