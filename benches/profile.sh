#!/usr/bin/env bash
# Where a proxied request's CPU goes: sekisho-proxy (and nginx, for comparison) under
# `wrk -t1 -c32`, HTTP/1.1 keep-alive, 12-byte body, same pinning as proxy.sh (servers on CPU 1,
# wrk on CPU 0).
#
#   benches/profile.sh [--sekisho BINARY] [--duration SECONDS] [--access-log]
#
# For each proxy it prints: the top symbols of a `perf record -e cpu-clock` sample (user and
# kernel; no hardware counters are needed) with the user/kernel split, and system calls per
# request from `strace -c` (strace slows the proxy down; the counts, not the times, are what
# to read). Needs perf (Debian: linux-perf) and strace. Ports 18501-18503 on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEKISHO="$ROOT/target/release/sekisho-proxy"
DURATION=5
ACCESS_LOG=false
while (($#)); do
    case "$1" in
        --sekisho) SEKISHO=$(realpath "$2"); shift ;;
        --duration) DURATION=$2; shift ;;
        --access-log) ACCESS_LOG=true ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
command -v perf >/dev/null && command -v strace >/dev/null && command -v wrk >/dev/null \
    || { echo "needs perf, strace, wrk, nginx: apt-get install linux-perf strace wrk nginx-light" >&2; exit 1; }

T=$(mktemp -d /tmp/sekisho-profile.XXXXXX)
chmod 755 "$T"
declare -A PID=()
cleanup() {
    local p
    for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PID[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$T/upstream.conf" <<EOF
daemon off; worker_processes 1; pid $T/upstream.pid; error_log $T/upstream.err warn;
events { worker_connections 1024; }
http { access_log off; default_type text/plain; keepalive_requests 100000000;
  client_body_temp_path $T/ub;
  server { listen 127.0.0.1:18501; location / { return 200 "hello world\n"; } } }
EOF
cat >"$T/nginx.conf" <<EOF
daemon off; worker_processes 1; master_process off; pid $T/nginx.pid; error_log $T/nginx.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000000; client_body_temp_path $T/nb;
  proxy_temp_path $T/np;
  upstream bench { server 127.0.0.1:18501; keepalive 64; }
  server { listen 127.0.0.1:18502;
    location / { proxy_pass http://bench; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
EOF
cat >"$T/sekisho.yaml" <<EOF
listen: {https: 127.0.0.1:18504, http: 127.0.0.1:18503, http_mode: serve, admin: 127.0.0.1:18505}
workers: 1
access_log: $ACCESS_LOG
limits: {idle_timeout: 300s}
upstreams:
  bench: {endpoints: ["http://127.0.0.1:18501"]}
hosts:
  - host: localhost
    public: true
    paths: [{path: /, type: Prefix, upstream: bench}]
EOF

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}
requests() { awk '/requests in/ {print $1}'; }

taskset -c 1 nginx -c "$T/upstream.conf" -e "$T/upstream.err" & PID[upstream]=$!
taskset -c 1 nginx -c "$T/nginx.conf" -e "$T/nginx.err" & PID[nginx]=$!
taskset -c 1 "$SEKISHO" --config "$T/sekisho.yaml" --log-format text >>"$T/access.log" 2>"$T/sekisho.err" &
PID[sekisho]=$!
for port in 18501 18502 18503; do wait_port "$port"; done
declare -A PORT=([nginx]=18502 [sekisho]=18503)

for name in sekisho nginx; do
    url="http://127.0.0.1:${PORT[$name]}/"
    taskset -c 0 wrk -t1 -c32 -d1s -H 'Host: localhost' "$url" >/dev/null # warm-up
    echo "=== $name: perf record -e cpu-clock, ${DURATION}s of wrk -t1 -c32"
    perf record -q -e cpu-clock -F 4999 -o "$T/$name.perf" -p "${PID[$name]}" 2>/dev/null &
    perf_pid=$!
    sleep 0.3
    n=$(taskset -c 0 wrk -t1 -c32 -d"${DURATION}s" -H 'Host: localhost' "$url" | requests)
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    samples=$(perf report -i "$T/$name.perf" --stdio --sort dso 2>/dev/null \
        | awk '/^#/ || NF == 0 {next} {print}')
    echo "requests: $n; share by object:"
    echo "$samples" | sed -n 1,8p
    echo "top symbols (self):"
    perf report -i "$T/$name.perf" --stdio --no-children --sort sym 2>/dev/null \
        | awk '/^#/ || NF == 0 {next} {print}' | sed -n 1,40p
    echo "user-space time by crate (share of all samples):"
    perf report -i "$T/$name.perf" --stdio --no-children --sort dso,sym 2>/dev/null \
        | awk '/^#/ || NF == 0 || $3 != "[.]" {next}
            { pct = $1; sub(/%/, "", pct); sym = $4; for (i = 5; i <= NF; i++) sym = sym " " $i
              gsub(/^[<&( ]+/, "", sym)
              if (sym ~ /malloc|free|_int_|unlink_chunk|cfree|realloc/) c = "libc malloc/free"
              else if (sym ~ /^__mem|^memcpy|^memmove|^memset/) c = "libc memcpy/memset"
              else if ($2 ~ /libc/) c = "libc other"
              else if (sym ~ /::/) { c = sym; sub(/::.*/, "", c) }
              else c = $2 " " sym
              t[c] += pct }
            END { for (c in t) printf "%7.2f%%  %s\n", t[c], c }' | sort -rn | sed -n 1,15p
    echo "=== $name: system calls per request (strace -c -f, 2 s of wrk -c32)"
    strace -c -f -o "$T/$name.strace" -p "${PID[$name]}" &
    strace_pid=$!
    sleep 0.5
    n=$(taskset -c 0 wrk -t1 -c32 -d2s -H 'Host: localhost' "$url" | requests)
    sleep 0.2
    kill -INT "$strace_pid"; wait "$strace_pid" || true
    awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "%-16s %6.2f per request\n", $NF, $4 / n}' \
        "$T/$name.strace" \
        | sort -k2 -nr | sed -n 1,12p
done
