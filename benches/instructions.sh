#!/usr/bin/env bash
# What auth costs per request, counted rather than timed: user-space instructions that
# sekisho-proxy executes per proxied request (callgrind), with the route public ("auth off")
# and with a policy and a valid session cookie ("auth on"), and the difference. On a quiet
# machine instruction counts repeat to ≈ 0.3 % from run to run, so they show changes far below
# the noise of proxy.sh's CPU-µs (kernel time is not counted here; it is the same for both).
# With other work competing for the cores, more polls return Pending and counts rise (11 % seen).
#
#   benches/instructions.sh [--sekisho BINARY] [--requests N] [--keep DIR]
#
# --keep DIR copies the two callgrind dumps there (auth-off.out, auth-on.out), for
# `callgrind_annotate --inclusive=yes DIR/auth-on.out` to show where the instructions go.
#
# Each variant: the proxy under `valgrind --tool=callgrind`, 200 warm-up requests on one
# keep-alive connection, counters zeroed, N (2000) more requests, counters dumped. Needs
# valgrind and nginx (Debian: valgrind nginx-light). Ports 18701-18708 on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEKISHO="$ROOT/target/release/sekisho-proxy"
REQUESTS=2000
KEEP=""
while (($#)); do
    case "$1" in
        --sekisho) SEKISHO=$(realpath "$2"); shift ;;
        --requests) REQUESTS=$2; shift ;;
        --keep) KEEP=$2; shift ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
for tool in valgrind callgrind_control nginx python3 curl openssl; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install valgrind nginx-light" >&2; exit 1; }
done

T=$(mktemp -d /tmp/sekisho-instructions.XXXXXX)
chmod 755 "$T"
# The proxy watches the directories of its configuration and certificates and reloads on any
# change there; callgrind_control's command files and the dumps go to $T, so those files live
# apart in $C, and no reload lands in the counted requests.
C="$T/conf"
mkdir "$C"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$T/upstream.conf" <<EOF
daemon off; worker_processes 1; pid $T/upstream.pid; error_log $T/upstream.err warn;
events { worker_connections 64; }
http { access_log off; default_type text/plain; keepalive_requests 100000000;
  client_body_temp_path $T/ub;
  server { listen 127.0.0.1:18701; location / { return 200 "hello world\n"; } } }
EOF
nginx -c "$T/upstream.conf" & PIDS+=($!)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$C/tls.key" -out "$C/tls.crt" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,DNS:auth.localhost >/dev/null 2>&1
"$SEKISHO" keys session "$C/session-keys" >/dev/null 2>&1
"$SEKISHO" keys signing "$C/signing-keys.pem" >/dev/null 2>&1

# config NAME PORT: auth-off is a public route; auth-on asks the policy (same as proxy.sh).
config() {
    local access="public: true" identity=""
    if [[ $1 == auth-on ]]; then
        access="policy: bench"
        identity="identity:
  auth_host: auth.localhost
  session_keys_file: $C/session-keys
  signing_keys_file: $C/signing-keys.pem
policies:
  bench: {allow: [{group: staff}]}"
    fi
    cat >"$C/$1.yaml" <<EOF
listen: {https: 127.0.0.1:$(($2 + 1)), http: 127.0.0.1:$2, http_mode: serve, admin: 127.0.0.1:$(($2 + 2))}
workers: 1
access_log: false
tls:
  certificates:
    - {cert: $C/tls.crt, key: $C/tls.key}
$identity
upstreams:
  bench: {endpoints: ["http://127.0.0.1:18701"]}
hosts:
  - host: localhost
    $access
    paths: [{path: /, type: Prefix, upstream: bench}]
EOF
}
config auth-off 18702
config auth-on 18706
COOKIE=$("$SEKISHO" --config "$C/auth-on.yaml" dev-session --host localhost \
    --subject bench --email bench@example.com --group staff --lifetime 24h)

cat >"$T/client.py" <<'EOF'
import http.client, sys
port, count, cookie = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
headers = {"Host": "localhost"}
if cookie:
    headers["Cookie"] = "__Host-sekisho=" + cookie
for _ in range(count):
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status} on port {port}")
EOF

# instructions NAME PORT COOKIE: prints instructions per request.
instructions() {
    local name=$1 port=$2 cookie=$3
    valgrind --tool=callgrind --callgrind-out-file="$T/$name.%p" \
        "$SEKISHO" --config "$C/$name.yaml" >"$T/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 120); do
        curl -s -o /dev/null -H 'Host: localhost' "http://127.0.0.1:$port/" && break
        sleep 0.5
    done
    python3 "$T/client.py" "$port" 200 "$cookie"
    callgrind_control -z "$pid" >/dev/null 2>&1
    python3 "$T/client.py" "$port" "$REQUESTS" "$cookie"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    local dump
    dump=$(ls "$T/$name".*.1)
    if [[ -n $KEEP ]]; then mkdir -p "$KEEP" && cp "$dump" "$KEEP/$name.out"; fi
    awk -v n="$REQUESTS" '/^summary:/ { printf "%.0f\n", $2 / n }' "$dump"
}

off=$(instructions auth-off 18702 "")
on=$(instructions auth-on 18706 "$COOKIE")
echo "sekisho-proxy: $("$SEKISHO" --version)"
echo "instructions per request, auth off (public route):         $off"
echo "instructions per request, auth on (valid session cookie):  $on"
echo "auth adds:                                                 $((on - off))"
