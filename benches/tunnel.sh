#!/usr/bin/env bash
# Side-by-side tunnel benchmark: Sekisho's tunnel (sekisho CLI -> TLS -> sekisho-proxy -> HTTP/2
# over the agent's TLS connection -> sekisho-agent), the same relayed through a second replica
# that does not hold the agent (CLI -> replica 2 -> TLS relay -> replica 1 -> agent), rathole 0.5
# (TLS transport; plain TCP as an extra row) and direct, to the same iperf3 and echo servers, in
# interleaved rounds. Then the proxy's memory per idle agent connection, how many idle agent
# connections one proxy holds, how fast a thousand agents come back after the proxy is killed or
# stopped (and its CPU meanwhile), and after the replica holding them is killed with another up,
# and memory per idle open tunnel stream.
#
#   benches/tunnel.sh            # full run, 4 min on a quiet machine (plus waits for builds), writes benches/RESULTS.md
#   benches/tunnel.sh --quick    # smoke test: 1 round, short runs, few agents and streams
#
# Options: --rounds N (3), --duration SECONDS (5), --pings N (20000), --agents N (1000),
#          --max-agents N (10000), --streams N (1000), --agent-deadline SECONDS (300),
#          --wait-builds SECONDS (600 per wait, 900 in all), --nice N (-10), --no-install,
#          --no-build,
#          --rev COMMIT (build that commit from a `git archive` in .cache/ instead of the work
#          tree, for when the shared tree is mid-edit), --bin-dir DIR (prebuilt sekisho-proxy,
#          sekisho-agent and sekisho; SEKISHO_REV says which commit), --results FILE (default
#          benches/RESULTS.md; --quick writes nothing unless given).
#
# Layout: the tunnel's two ends, sekisho-proxy + sekisho-agent or the rathole server + client,
# are pinned to CPU 1; everything else to CPU 0: the load generators (iperf3 -c, the ping-pong
# and idle-stream clients), the target servers (iperf3 -s, echo), the `sekisho tunnel --listen`
# CLI and the idle agent fleet. Everything listens on 127.0.0.1, ports 18600-18699, and is
# stopped on exit. Not part of the test suite.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="benches/tunnel.sh${*:+ $*}"
BENCH="$ROOT/benches"
CACHE="$ROOT/.cache"

ROUNDS=3
DURATION=5
PINGS=20000
AGENTS=1000
MAX_AGENTS=10000
STREAMS=1000
AGENT_DEADLINE=300
WAIT_BUILDS=600
INSTALL=1
BUILD=1
QUICK=0
RESULTS=""
BIN_DIR=""
REV=""
NICE=-10
while (($#)); do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; DURATION=2; PINGS=5000; AGENTS=256; MAX_AGENTS=1024
                 STREAMS=200; AGENT_DEADLINE=90; WAIT_BUILDS=60 ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --pings) PINGS=$2; shift ;;
        --agents) AGENTS=$2; shift ;;
        --max-agents) MAX_AGENTS=$2; shift ;;
        --streams) STREAMS=$2; shift ;;
        --agent-deadline) AGENT_DEADLINE=$2; shift ;;
        --wait-builds) WAIT_BUILDS=$2; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --bin-dir) BIN_DIR=$(realpath "$2"); BUILD=0; shift ;;
        --rev) REV=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        --nice) NICE=$2; shift ;;
        -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $RESULTS && $QUICK == 0 ]]; then RESULTS="$BENCH/RESULTS.md"; fi

SERVER_CPU=1
CLIENT_CPU=0
# Connections per fleet agent process: the agent's maximum (agent/src/config.rs MAX_CONNECTIONS).
FLEET_CONNECTIONS=64

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
RATHOLE="$CACHE/rathole/bin/rathole"

install_rathole() {
    [[ -x $RATHOLE ]] && return 0
    ((INSTALL)) || die "rathole missing at $RATHOLE (run without --no-install)"
    log "installing rathole 0.5.0 with cargo into $CACHE/rathole (several minutes, once)"
    if cargo install --locked rathole --version 0.5.0 --root "$CACHE/rathole" >&2; then return 0; fi
    # rathole 0.5.0's lock file pins `time` 0.3.29, which newer compilers reject (E0282): build
    # the same source with only `time` updated, everything else as locked.
    log "the locked build failed; retrying with only the \`time\` crate updated"
    local src
    src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name rathole-0.5.0 | head -n1)
    [[ -n $src ]] || die "rathole 0.5.0 source not found in the cargo registry"
    rm -rf "$CACHE/rathole-src"
    cp -r "$src" "$CACHE/rathole-src"
    printf '\n[workspace]\n' >>"$CACHE/rathole-src/Cargo.toml" # not part of sekisho's workspace
    (cd "$CACHE/rathole-src" && cargo update -p time >&2 \
        && cargo install --locked --path . --root "$CACHE/rathole" >&2) || die "rathole build failed"
}

install_tools() {
    local missing=()
    command -v iperf3 >/dev/null || missing+=(iperf3)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if [[ ! -x $RATHOLE ]]; then
        # rathole's default `tls` feature uses native-tls, i.e. the system OpenSSL.
        dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
        command -v pkg-config >/dev/null || missing+=(pkg-config)
    fi
    if ((${#missing[@]})); then
        ((INSTALL)) || die "missing ${missing[*]} (run without --no-install)"
        log "installing ${missing[*]}"
        # Keep a package's init script from starting a daemon (iperf3 ships one).
        local policy=/usr/sbin/policy-rc.d created=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        ((created)) && rm -f "$policy"
    fi
    install_rathole
    local packages=(-p sekisho-proxy -p sekisho-agent -p sekisho-cli)
    if [[ -n $REV ]]; then
        # A clean copy of the commit, built in a target directory of its own (seeded from the
        # work tree's release build the first time, so only what differs is compiled again).
        local rev src target=$CACHE/tunnel-bench-target
        rev=$(git -C "$ROOT" rev-parse --short "$REV") || die "no commit $REV"
        src=$CACHE/tunnel-bench-src-$rev
        if [[ ! -d $src ]]; then
            mkdir -p "$src"
            git -C "$ROOT" archive "$rev" | tar -x -C "$src"
        fi
        if [[ ! -d $target/release && -d $ROOT/target/release ]]; then
            mkdir -p "$target" && cp -a "$ROOT/target/release" "$target/"
        fi
        if ((BUILD)); then
            log "building $rev's sekisho-proxy, sekisho-agent and sekisho (release) in $src"
            (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release "${packages[@]}" >&2)
        fi
        BIN_DIR=$target/release SEKISHO_REV=$rev
    elif ((BUILD)); then
        log "building sekisho-proxy, sekisho-agent and sekisho (release)"
        (cd "$ROOT" && cargo build --release "${packages[@]}" >&2)
    fi
    local dir=${BIN_DIR:-$ROOT/target/release}
    PROXY="$dir/sekisho-proxy" AGENT="$dir/sekisho-agent" CLI="$dir/sekisho"
    if [[ -z $BIN_DIR ]]; then
        SEKISHO_REV=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- \
            proxy agent tunnel-cli wire identity Cargo.toml Cargo.lock || echo '+uncommitted changes')
    fi
    local b
    for b in "$PROXY" "$AGENT" "$CLI"; do [[ -x $b ]] || die "$b not built"; done
    "$PROXY" dev-token --help >/dev/null 2>&1 \
        || die "$PROXY has no dev-token subcommand: rebuild it from a tree that has it (proxy/src/main.rs)"
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
declare -A PID=()
FLEET=() # pids of the idle agent fleet
T=""

kill_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    ((${#FLEET[@]})) && kill_pids "${FLEET[@]}"
    FLEET=()
    ((${#PID[@]})) && kill_pids "${PID[@]}"
    PID=()
    if [[ -n $T && -d $T && -z ${KEEP_TMP:-} ]]; then rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tree_pids() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

# utime + stime of a process tree, in clock ticks.
cpu_ticks() {
    local total=0 p stat
    for p in $(tree_pids "$1"); do
        stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

rss_kib() {
    awk '/^VmRSS:/ {print $2; exit}' /proc/"$1"/status 2>/dev/null || echo 0
}

# All CPUs' steal time so far, in clock ticks (the VM's hypervisor taking the CPU away).
steal_ticks() { awk '/^cpu / {print $9; exit}' /proc/stat; }

# Whether a compiler or linker (Rust, C, Go) is running: someone's build competing for the CPUs.
BUILD_PROCS='rustc|cc1|cc1plus|cc|ld|ld.bfd|ld.gold|lld|collect2|compile|link|asm|cgo'
busy() { if ps -eo comm= | grep -qxE "$BUILD_PROCS"; then echo 1; else echo 0; fi; }

# CPU time of low-priority (nice > 0) processes so far, all CPUs, in clock ticks: others' builds
# run niced; this script's processes run at nice <= 0 and are not counted.
niced_ticks() { awk '/^cpu / {print $3; exit}' /proc/stat; }

wait_port() {
    local port=$1 tries=${2:-100}
    for _ in $(seq "$tries"); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Waits until no compiler runs (others' builds share the 2 CPUs), at most WAIT_BUILDS seconds
# per wait and WAIT_TOTAL over the whole run.
BUILD_WAITS=()
WAITED_TOTAL=0
WAIT_TOTAL=900
wait_quiet() {
    local what=$1 start=$SECONDS limit=$WAIT_BUILDS
    ((limit > WAIT_TOTAL - WAITED_TOTAL)) && limit=$((WAIT_TOTAL - WAITED_TOTAL))
    ((limit < 0)) && limit=0
    if [[ $(busy) == 1 ]] && ((limit > 0)); then log "waiting for running builds to finish before $what (at most ${limit}s)"; fi
    while [[ $(busy) == 1 ]] && ((SECONDS - start < limit)); do sleep 2; done
    local waited=$((SECONDS - start))
    WAITED_TOTAL=$((WAITED_TOTAL + waited))
    if [[ $(busy) == 1 ]]; then
        if ((limit > 0)); then
            log "a build is still running after ${waited}s: measuring $what anyway"
            BUILD_WAITS+=("$what: waited ${waited}s, a build was still running")
        else
            log "a build is running and the ${WAIT_TOTAL}s wait budget is spent: measuring $what anyway"
            BUILD_WAITS+=("$what: not waited (budget spent), a build was running")
        fi
    elif ((waited > 2)); then
        BUILD_WAITS+=("$what: waited ${waited}s for builds")
    fi
}

# The sum of a metric's samples on an admin listener's /metrics.
metric() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" \
        | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

# Ports (all on 127.0.0.1).
IPERF_SERVER=18601
ECHO_SERVER=18602
SK_HTTPS=18611 SK_ADMIN=18612
MEM_HTTPS=18621 MEM_ADMIN=18622 MEM_CLI=18623
RH_TLS=18631 RH_TCP=18641
# A second replica that holds no agent: its streams are relayed to the first (`replicas:`).
RELAY_HTTPS=18651 RELAY_ADMIN=18652
# The failover measurement: a second idle-agent replica, and the Service stand-in before both.
MEM2_HTTPS=18661 MEM2_ADMIN=18662 FRONT=18663
PEERS=(direct rathole rathole-tcp sekisho sekisho-relay)
declare -A IPERF_PORT=([direct]=$IPERF_SERVER [rathole]=18632 [rathole-tcp]=18642 [sekisho]=18613
    [sekisho-relay]=18653)
declare -A ECHO_PORT=([direct]=$ECHO_SERVER [rathole]=18633 [rathole-tcp]=18643 [sekisho]=18614
    [sekisho-relay]=18654)
ALL_PORTS=(18601 18602 18611 18612 18613 18614 18621 18622 18623 18631 18632 18633 18641 18642 18643
    18651 18652 18653 18654 18661 18662 18663)

# start NAME: starts one long-running process, pinned, stderr in $T/NAME.err.
start() {
    local name=$1 wait_for=""
    case "$name" in
        iperf3) taskset -c $CLIENT_CPU iperf3 -s -p $IPERF_SERVER >"$T/$name.out" 2>"$T/$name.err" &
            wait_for=$IPERF_SERVER ;;
        front) taskset -c $CLIENT_CPU python3 "$BENCH/front.py" --port $FRONT \
                  --to 127.0.0.1:$MEM_HTTPS --to 127.0.0.1:$MEM2_HTTPS >"$T/$name.out" 2>"$T/$name.err" &
            wait_for=$FRONT ;;
        echo) taskset -c $CLIENT_CPU python3 "$BENCH/echo_server.py" --port $ECHO_SERVER \
                  >"$T/$name.out" 2>"$T/$name.err" &
            wait_for=$ECHO_SERVER ;;
        proxy|proxy-mem|proxy-mem2|proxy-relay)
            taskset -c $SERVER_CPU "$PROXY" --config "$T/$name.yaml" --log-format text \
                >"$T/$name.out" 2>>"$T/$name.err" &
            case "$name" in
                proxy) wait_for=$SK_HTTPS ;;
                proxy-mem) wait_for=$MEM_HTTPS ;;
                proxy-mem2) wait_for=$MEM2_HTTPS ;;
                proxy-relay) wait_for=$RELAY_HTTPS ;;
            esac ;;
        agent|agent-mem)
            RUST_LOG=warn taskset -c $SERVER_CPU "$AGENT" run --config "$T/$name.yaml" \
                >"$T/$name.out" 2>>"$T/$name.err" & ;;
        cli-iperf|cli-echo|cli-mem|cli-relay-iperf|cli-relay-echo)
            local listen host proxy_port
            case "$name" in
                cli-iperf) listen=${IPERF_PORT[sekisho]} host=iperf.bench.test proxy_port=$SK_HTTPS ;;
                cli-echo) listen=${ECHO_PORT[sekisho]} host=echo.bench.test proxy_port=$SK_HTTPS ;;
                cli-relay-iperf) listen=${IPERF_PORT[sekisho-relay]} host=iperf.bench.test
                    proxy_port=$RELAY_HTTPS ;;
                cli-relay-echo) listen=${ECHO_PORT[sekisho-relay]} host=echo.bench.test
                    proxy_port=$RELAY_HTTPS ;;
                cli-mem) listen=$MEM_CLI host=echo.bench.test proxy_port=$MEM_HTTPS ;;
            esac
            SEKISHO_TOKEN=$TOKEN taskset -c $CLIENT_CPU "$CLI" --ca "$T/ca.crt" \
                --connect-to 127.0.0.1:$proxy_port tunnel --listen 127.0.0.1:$listen \
                "$host:$proxy_port" >"$T/$name.out" 2>>"$T/$name.err" &
            wait_for=$listen ;;
        rathole-server|rathole-tcp-server)
            RUST_LOG=warn taskset -c $SERVER_CPU "$RATHOLE" --server "$T/$name.toml" \
                >"$T/$name.out" 2>>"$T/$name.err" &
            if [[ $name == rathole-server ]]; then wait_for=$RH_TLS; else wait_for=$RH_TCP; fi ;;
        rathole-client|rathole-tcp-client)
            RUST_LOG=warn taskset -c $SERVER_CPU "$RATHOLE" --client "$T/$name.toml" \
                >"$T/$name.out" 2>>"$T/$name.err" & ;;
        *) die "unknown process $name" ;;
    esac
    PID[$name]=$!
    if [[ -n $wait_for ]]; then
        wait_port "$wait_for" || die "$name did not listen on $wait_for (see $T/$name.err)"
    fi
}

stop() {
    local name=$1
    [[ -n ${PID[$name]:-} ]] || return 0
    kill_pids "${PID[$name]}"
    unset "PID[$name]"
}

# Waits (at most 30 s) until the proxy on admin port $1 counts at least $2 agent connections.
wait_agents() {
    local admin=$1 want=$2
    for _ in $(seq 150); do
        (($(metric "$admin" sekisho_agents_connected) >= want)) && return 0
        sleep 0.2
    done
    return 1
}

start_sekisho() {
    start proxy
    start agent
    wait_agents $SK_ADMIN 1 || die "the agent did not connect (see $T/agent.err, $T/proxy.err)"
    start cli-iperf
    start cli-echo
    start proxy-relay
    start cli-relay-iperf
    start cli-relay-echo
}

start_rathole() {
    local v=$1 # rathole or rathole-tcp
    start "$v-server"
    start "$v-client"
    # The server opens a service's port once the client has registered it.
    wait_port "${IPERF_PORT[$v]}" 200 && wait_port "${ECHO_PORT[$v]}" 200 \
        || die "$v did not open its service ports (see $T/$v-*.err)"
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
NAMES=(proxy.bench.test iperf.bench.test echo.bench.test auth.bench.test)
TOKEN=""

proxy_config() {
    local https=$1 admin=$2 replicas=${3:-}
    cat <<EOF
listen:
  https: 127.0.0.1:$https
  admin: 127.0.0.1:$admin
workers: 1
access_log: false
tls:
  certificates:
    - {cert: $T/tls.crt, key: $T/tls.key}
limits: {max_connections: 50000, idle_timeout: 600s}
identity:
  auth_host: auth.bench.test
  signing_keys_file: $T/signing-keys.pem
  session_keys_file: $T/session-keys
replicas: [$replicas]
policies:
  bench: {allow: [{email: bench@bench.test}]}
agents:
  bench: {public_keys: ["$AGENT_KEY"]}
tunnels:
  - {host: iperf.bench.test, policy: bench, agent: bench, target: "127.0.0.1:$IPERF_SERVER"}
  - {host: echo.bench.test, policy: bench, agent: bench, target: "127.0.0.1:$ECHO_SERVER"}
EOF
}

agent_config() {
    local https=$1 connections=$2
    cat <<EOF
name: bench
key_file: $T/agent.key
proxies:
  - {url: "https://proxy.bench.test:$https", address: "127.0.0.1:$https"}
ca_file: $T/ca.crt
connections: $connections
allow:
  tcp: ["127.0.0.1:$IPERF_SERVER", "127.0.0.1:$ECHO_SERVER"]
EOF
}

rathole_configs() {
    local v=$1 port=$2 transport=$3
    {
        printf '[server]\nbind_addr = "127.0.0.1:%s"\ndefault_token = "bench-token"\n' "$port"
        printf '[server.transport]\ntype = "%s"\n' "$transport"
        if [[ $transport == tls ]]; then
            printf '[server.transport.tls]\npkcs12 = "%s"\npkcs12_password = "bench"\n' "$T/identity.pfx"
        fi
        printf '[server.services.iperf]\nbind_addr = "127.0.0.1:%s"\n' "${IPERF_PORT[$v]}"
        printf '[server.services.echo]\nbind_addr = "127.0.0.1:%s"\n' "${ECHO_PORT[$v]}"
    } >"$T/$v-server.toml"
    {
        printf '[client]\nremote_addr = "127.0.0.1:%s"\ndefault_token = "bench-token"\n' "$port"
        printf '[client.transport]\ntype = "%s"\n' "$transport"
        if [[ $transport == tls ]]; then
            printf '[client.transport.tls]\ntrusted_root = "%s"\nhostname = "proxy.bench.test"\n' "$T/ca.crt"
        fi
        printf '[client.services.iperf]\nlocal_addr = "127.0.0.1:%s"\n' $IPERF_SERVER
        printf '[client.services.echo]\nlocal_addr = "127.0.0.1:%s"\n' $ECHO_SERVER
    } >"$T/$v-client.toml"
}

write_configs() {
    # One ECDSA P-256 CA and a leaf for every bench name, shared by sekisho and rathole.
    openssl ecparam -name prime256v1 -genkey -noout -out "$T/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$T/ca.key" -subj "/CN=sekisho tunnel bench CA" -days 2 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -out "$T/ca.crt" 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out "$T/leaf.ec.key" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$T/leaf.ec.key" -out "$T/tls.key"
    openssl req -new -key "$T/tls.key" -subj "/CN=proxy.bench.test" -out "$T/leaf.csr" 2>/dev/null
    local san="" n
    for n in "${NAMES[@]}"; do san+="DNS:$n,"; done
    printf 'subjectAltName=%sIP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" \
        >"$T/leaf.ext"
    openssl x509 -req -in "$T/leaf.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial \
        -days 2 -extfile "$T/leaf.ext" -out "$T/tls.crt" 2>/dev/null
    # rathole's server (native-tls) takes a PKCS#12 identity.
    openssl pkcs12 -export -out "$T/identity.pfx" -inkey "$T/tls.key" -in "$T/tls.crt" \
        -certfile "$T/ca.crt" -passout pass:bench

    "$PROXY" keys signing "$T/signing-keys.pem" >"$T/keys.out" 2>&1 \
        || { cat "$T/keys.out" >&2; die "sekisho-proxy keys signing failed"; }
    "$PROXY" keys session "$T/session-keys" >"$T/keys.out" 2>&1 \
        || { cat "$T/keys.out" >&2; die "sekisho-proxy keys session failed"; }
    AGENT_KEY=$("$AGENT" init --key "$T/agent.key" --name bench 2>/dev/null | head -n1)
    [[ -n $AGENT_KEY ]] || die "sekisho-agent init printed no key"

    proxy_config $SK_HTTPS $SK_ADMIN >"$T/proxy.yaml"
    proxy_config $MEM_HTTPS $MEM_ADMIN >"$T/proxy-mem.yaml"
    proxy_config $MEM2_HTTPS $MEM2_ADMIN >"$T/proxy-mem2.yaml"
    proxy_config $RELAY_HTTPS $RELAY_ADMIN "\"127.0.0.1:$SK_HTTPS\"" >"$T/proxy-relay.yaml"
    local f
    for f in proxy proxy-mem proxy-mem2 proxy-relay; do
        "$PROXY" check-config "$T/$f.yaml" >/dev/null 2>&1 \
            || { "$PROXY" check-config "$T/$f.yaml" >&2 || true; die "invalid $f config"; }
    done
    TOKEN=$("$PROXY" --config "$T/proxy.yaml" dev-token --subject bench --email bench@bench.test \
        --lifetime 24h) || die "sekisho-proxy dev-token failed"
    [[ -n $TOKEN ]] || die "sekisho-proxy dev-token printed no token"

    agent_config $SK_HTTPS 1 >"$T/agent.yaml"
    agent_config $MEM_HTTPS 1 >"$T/agent-mem.yaml"
    for f in agent agent-mem; do
        "$AGENT" check-config "$T/$f.yaml" >/dev/null 2>&1 \
            || { "$AGENT" check-config "$T/$f.yaml" >&2 || true; die "invalid $f config"; }
    done

    rathole_configs rathole $RH_TLS tls
    rathole_configs rathole-tcp $RH_TCP tcp
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# cores TICKS NANOSECONDS: CPU-seconds per second.
cores() { awk -v t="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN {printf "%.2f", t / hz / (ns / 1e9)}'; }

# The processes that carry a peer's traffic (their CPU is recorded per run).
components() {
    case "$1" in
        direct) echo iperf3 ;;
        rathole|rathole-tcp) echo "$1-server $1-client iperf3" ;;
        sekisho) echo "proxy agent cli-iperf iperf3" ;;
        sekisho-relay) echo "proxy-relay proxy agent cli-relay-iperf iperf3" ;;
    esac
}

# Throughput: iperf3 -P STREAMS for DURATION seconds; MB/s received and each component's CPU.
throughput() {
    local streams=$1 peer=$2 round=$3 c t0 t1 s0 s1 n0 n1 json busy_before
    local comps
    read -r -a comps <<<"$(components "$peer")"
    declare -A before=()
    busy_before=$(busy)
    for c in "${comps[@]}"; do before[$c]=$(cpu_ticks "${PID[$c]}"); done
    s0=$(steal_ticks) n0=$(niced_ticks)
    t0=$(date +%s%N)
    json=$(taskset -c $CLIENT_CPU timeout $((DURATION + 30)) iperf3 -c 127.0.0.1 \
        -p "${IPERF_PORT[$peer]}" -t "$DURATION" -P "$streams" -J --connect-timeout 5000 2>&1) || true
    t1=$(date +%s%N)
    s1=$(steal_ticks) n1=$(niced_ticks)
    local cpu="" ticks
    for c in "${comps[@]}"; do
        ticks=$(($(cpu_ticks "${PID[$c]}") - before[$c]))
        cpu+="$c=$(cores "$ticks" $((t1 - t0))),"
    done
    local mbps
    mbps=$(python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    if "error" in d:
        raise ValueError(d["error"])
    print("%.1f" % (d["end"]["sum_received"]["bits_per_second"] / 8e6))
except Exception as e:
    print("NA", e, file=sys.stderr)
    print("NA")
' <<<"$json" 2>>"$T/iperf-errors.log")
    local steal others b
    steal=$(cores $((s1 - s0)) $((t1 - t0)))
    others=$(cores $((n1 - n0)) $((t1 - t0)))
    b=$((busy_before | $(busy)))
    printf 'tput\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$streams" "$peer" "$round" "$mbps" "${cpu%,}" \
        "$steal" "$b" "$others" >>"$T/results.tsv"
    log "  tput P$streams $peer: $mbps MB/s, CPU (cores) ${cpu%,}; steal $steal, others' niced work $others$( ((b)) && echo ', a build was running')"
    if [[ $mbps == NA ]]; then log "  iperf3 failed for $peer: $(tail -n1 "$T/iperf-errors.log")"; fi
    return 0
}

# Ping-pong: 64-byte round trips over one connection through the peer's echo path.
pingpong() {
    local peer=$1 round=$2 out busy_before n0 t0
    busy_before=$(busy) n0=$(niced_ticks) t0=$(date +%s%N)
    out=$(taskset -c $CLIENT_CPU python3 "$BENCH/pingpong.py" --port "${ECHO_PORT[$peer]}" \
        --count "$PINGS" --deadline 90) || true
    local b=$((busy_before | $(busy))) others
    others=$(cores $(($(niced_ticks) - n0)) $(($(date +%s%N) - t0)))
    python3 - "$peer" "$round" "$b,$others" "$out" >>"$T/results.tsv" <<'EOF'
import json, sys
peer, rnd, b, out = sys.argv[1:5]
b = b.replace(",", "\t")
try:
    d = json.loads(out)
except ValueError:
    d = {"error": "no output: %r" % out}
if "error" in d:
    print("ping\t%s\t%s\tNA\tNA\tNA\tNA\t%s" % (peer, rnd, b))
    print("ping-pong failed for %s: %s" % (peer, d["error"]), file=sys.stderr)
else:
    print("ping\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s" % (peer, rnd, d["p50_us"], d["p99_us"], d["mean_us"], d["max_us"], b))
EOF
    log "  ping $peer: $(tail -n1 "$T/results.tsv" | cut -f4-7 | tr '\t' ' ') (p50 p99 mean max µs); others' niced work $others"
}

check_paths() {
    local peer out
    for peer in "${PEERS[@]}"; do
        out=$(taskset -c $CLIENT_CPU python3 "$BENCH/pingpong.py" --port "${ECHO_PORT[$peer]}" \
            --warmup 10 --count 100 --deadline 20) || die "echo through $peer failed: $out"
        out=$(taskset -c $CLIENT_CPU timeout 30 iperf3 -c 127.0.0.1 -p "${IPERF_PORT[$peer]}" -t 1 \
            -P 2 -J --connect-timeout 5000 2>&1) || die "iperf3 through $peer failed: $(tail -n 5 <<<"$out")"
    done
}

# The idle agent fleet: agent processes of FLEET_CONNECTIONS connections each (pinned to the
# client CPU) are started against proxy-mem until it counts TARGET agent connections, pacing
# the starts so that at most 512 connections are being set up at a time. Bounded by DEADLINE s.
# The fleet dials FLEET_PORT (proxy-mem's, or the front's).
FLEET_LINKS=0
FLEET_PORT=$MEM_HTTPS
grow_fleet() {
    local target=$1 deadline=$2 start=$SECONDS n connected
    while ((SECONDS - start < deadline)); do
        connected=$(metric $MEM_ADMIN sekisho_agents_connected)
        ((connected >= target)) && return 0
        if ((FLEET_LINKS < target)) && ((connected + 512 >= FLEET_LINKS)); then
            n=$((target - FLEET_LINKS))
            ((n > FLEET_CONNECTIONS)) && n=$FLEET_CONNECTIONS
            local cfg="$T/fleet-$FLEET_PORT-$n.yaml"
            [[ -e $cfg ]] || agent_config $FLEET_PORT "$n" >"$cfg"
            RUST_LOG=warn taskset -c $CLIENT_CPU "$AGENT" run --config "$cfg" \
                >/dev/null 2>>"$T/fleet.err" &
            FLEET+=($!)
            FLEET_LINKS=$((FLEET_LINKS + n))
            sleep 0.05
        else
            sleep 0.5
        fi
    done
    return 1
}

fleet_rss_kib() {
    local total=0 p
    for p in "${FLEET[@]}"; do total=$((total + $(rss_kib "$p"))); done
    echo "$total"
}

fleet_alive() {
    local alive=0 p
    for p in "${FLEET[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    echo "$alive"
}

# Memory per idle agent connection, then how many one proxy holds.
idle_agents() {
    wait_quiet "the idle-agent measurement"
    start proxy-mem
    # One connection first, so that state built on the first agent is not counted per agent.
    start agent-mem
    wait_agents $MEM_ADMIN 1 || die "agent-mem did not connect"
    sleep 2
    local pid=${PID[proxy-mem]} rss0 rss1 t0 ok connected
    rss0=$(rss_kib "$pid")
    FLEET_LINKS=1 # the agent-mem connection
    log "idle agents: growing to $((AGENTS + 1)) connections"
    t0=$SECONDS
    ok=1
    grow_fleet $((AGENTS + 1)) 120 || ok=0
    local took=$((SECONDS - t0))
    sleep 5 # a keep-alive ping on every connection
    connected=$(metric $MEM_ADMIN sekisho_agents_connected)
    rss1=$(rss_kib "$pid")
    printf 'agents\tmem\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$AGENTS" "$((connected - 1))" "$took" \
        "$rss0" "$rss1" "${#FLEET[@]}" "$(fleet_alive)" "$(fleet_rss_kib)" >>"$T/results.tsv"
    log "  $((connected - 1)) idle agent connections in ${took}s: proxy RSS $rss0 -> $rss1 KiB" \
        "($(((rss1 - rss0) * 1024 / (connected > 1 ? connected - 1 : 1))) B each)"
    ((ok)) || log "  did not reach $AGENTS within 120 s"

    log "idle agents: growing to $MAX_AGENTS connections (at most ${AGENT_DEADLINE}s)"
    t0=$SECONDS
    grow_fleet "$MAX_AGENTS" "$AGENT_DEADLINE" || log "  did not reach $MAX_AGENTS within ${AGENT_DEADLINE}s"
    took=$((SECONDS - t0))
    sleep 5
    connected=$(metric $MEM_ADMIN sekisho_agents_connected)
    local rss2 fds
    rss2=$(rss_kib "$pid")
    fds=$(ls /proc/"$pid"/fd 2>/dev/null | wc -l)
    printf 'agents\tmax\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$MAX_AGENTS" "$connected" "$took" \
        "$rss0" "$rss2" "${#FLEET[@]}" "$(fleet_alive)" "$(fleet_rss_kib)" "$fds" \
        "$(metric $MEM_ADMIN sekisho_agent_refusals_total)" >>"$T/results.tsv"
    log "  $connected agent connections (${#FLEET[@]} fleet processes, $(fleet_alive) alive) in ${took}s;" \
        "proxy RSS $rss2 KiB, $fds fds"
    kill_pids "${FLEET[@]}"
    FLEET=()
    stop agent-mem
    stop proxy-mem
}

# Agents coming back: AGENTS fleet connections on a fresh proxy-mem; the proxy killed (SIGKILL)
# or stopped (SIGTERM: it asks every agent to drain first), kept away OUTAGE seconds, started
# again. How long from its listening until every connection is back (polled every 0.1 s, at
# most 60 s), and the CPU the new proxy process used until then (its start included).
reconnect_agents() {
    wait_quiet "the reconnect measurement"
    start proxy-mem
    FLEET_LINKS=0
    grow_fleet "$AGENTS" 120 || log "  the fleet did not reach $AGENTS within 120 s"
    local how outage want pid t0 back connected cpu
    want=$(metric $MEM_ADMIN sekisho_agents_connected)
    for how in kill term; do
        for outage in 5 30; do
            ((QUICK)) && ((outage > 5)) && continue
            pid=${PID[proxy-mem]}
            if [[ $how == kill ]]; then
                kill -KILL "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
                unset "PID[proxy-mem]"
            else
                stop proxy-mem
            fi
            sleep "$outage"
            start proxy-mem
            t0=$(date +%s%N)
            pid=${PID[proxy-mem]}
            back=-1
            for _ in $(seq 600); do
                connected=$(metric $MEM_ADMIN sekisho_agents_connected)
                if ((connected >= want)); then
                    back=$((($(date +%s%N) - t0) / 1000000))
                    break
                fi
                sleep 0.1
            done
            cpu=$(($(cpu_ticks "$pid") * 1000 / $(getconf CLK_TCK)))
            printf 'reconnect\t%s\t%s\t%s\t%s\t%s\t%s\n' "$how" "$outage" "$want" "$connected" \
                "$back" "$cpu" >>"$T/results.tsv"
            log "  after SIG${how^^} and ${outage}s away: $connected of $want back in ${back} ms;" \
                "proxy CPU ${cpu} ms"
        done
    done
    kill_pids "${FLEET[@]}"
    FLEET=()
    stop proxy-mem
}

# Agents moving to the other replica: AGENTS fleet connections through the front (the Service
# stand-in, benches/front.py: each connection to the first replica that accepts it) all on
# proxy-mem, proxy-mem2 up beside it; proxy-mem killed (SIGKILL). How long from the kill until
# every connection is on proxy-mem2 (polled every 0.1 s, at most 60 s), and proxy-mem2's CPU.
failover_agents() {
    wait_quiet "the replica failover measurement"
    start proxy-mem
    start proxy-mem2
    start front
    FLEET_LINKS=0
    FLEET_PORT=$FRONT
    grow_fleet "$AGENTS" 120 || log "  the fleet did not reach $AGENTS within 120 s"
    local want pid cpu0 t0 back=-1 connected cpu
    want=$(metric $MEM_ADMIN sekisho_agents_connected)
    pid=${PID[proxy-mem2]}
    cpu0=$(cpu_ticks "$pid")
    t0=$(date +%s%N)
    kill -KILL "${PID[proxy-mem]}" 2>/dev/null || true
    wait "${PID[proxy-mem]}" 2>/dev/null || true
    unset "PID[proxy-mem]"
    for _ in $(seq 600); do
        connected=$(metric $MEM2_ADMIN sekisho_agents_connected)
        if ((connected >= want)); then
            back=$((($(date +%s%N) - t0) / 1000000))
            break
        fi
        sleep 0.1
    done
    cpu=$((($(cpu_ticks "$pid") - cpu0) * 1000 / $(getconf CLK_TCK)))
    printf 'reconnect\treplica\t0\t%s\t%s\t%s\t%s\n' "$want" "$connected" "$back" "$cpu" \
        >>"$T/results.tsv"
    log "  after the replica holding them was killed: $connected of $want on the other in ${back} ms;" \
        "its CPU ${cpu} ms"
    kill_pids "${FLEET[@]}"
    FLEET=()
    FLEET_PORT=$MEM_HTTPS
    stop front
    stop proxy-mem2
}

# Memory per idle open stream: sekisho (proxy, agent, CLI) and rathole TLS (server, client),
# each freshly started, STREAMS connections held open to the echo server.
idle_streams() {
    wait_quiet "the idle-stream measurement"
    start proxy-mem
    start agent-mem
    wait_agents $MEM_ADMIN 1 || die "agent-mem did not connect"
    start cli-mem
    # A few streams first (opened and closed), so that lazily built state is not counted.
    taskset -c $CLIENT_CPU python3 "$BENCH/idle_streams.py" --port $MEM_CLI --count 10 --settle 0 \
        >/dev/null || die "no stream through sekisho"
    sleep 1
    local out
    out=$(taskset -c $CLIENT_CPU python3 "$BENCH/idle_streams.py" --port $MEM_CLI --count "$STREAMS" \
        --pid "proxy:${PID[proxy-mem]}" --pid "agent:${PID[agent-mem]}" --pid "cli:${PID[cli-mem]}" \
        --gauge "http://127.0.0.1:$MEM_ADMIN/metrics" sekisho_tunnel_streams_open) || true
    log "  sekisho idle streams: $out"
    printf 'streams\tsekisho\t%s\n' "$out" >>"$T/results.tsv"
    stop cli-mem
    stop agent-mem
    stop proxy-mem

    stop rathole-client
    stop rathole-server
    start_rathole rathole
    taskset -c $CLIENT_CPU python3 "$BENCH/idle_streams.py" --port "${ECHO_PORT[rathole]}" --count 10 \
        --settle 0 >/dev/null || die "no stream through rathole"
    sleep 1
    out=$(taskset -c $CLIENT_CPU python3 "$BENCH/idle_streams.py" --port "${ECHO_PORT[rathole]}" \
        --count "$STREAMS" --pid "server:${PID[rathole-server]}" --pid "client:${PID[rathole-client]}") || true
    log "  rathole idle streams: $out"
    printf 'streams\trathole\t%s\n' "$out" >>"$T/results.tsv"
}

machine_info() {
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "command=$COMMAND"
        echo "nproc=$(nproc)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
        echo "kernel=$(uname -r)"
        echo "memory=$(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
        echo "iperf3=$(iperf3 --version | head -n1)"
        echo "rathole=rathole $("$RATHOLE" --version | sed -n 's/^Build Version: *//p') (default features; TLS through native-tls, i.e. $(openssl version | cut -d' ' -f1-2))"
        echo "python=$(python3 -V)"
        echo "openssl=$(openssl version)"
        echo "sekisho=$("$PROXY" --version), $("$AGENT" --version), $("$CLI" --version) @ ${SEKISHO_REV:-unknown commit}"
        echo "rustc=$(rustc -V)"
        echo "rounds=$ROUNDS"
        echo "duration=$DURATION"
        echo "pings=$PINGS"
        echo "agents=$AGENTS"
        echo "max_agents=$MAX_AGENTS"
        echo "streams=$STREAMS"
        echo "fleet_connections=$FLEET_CONNECTIONS"
        echo "nice=$(ps -o ni= -p $$ | tr -d ' ')"
        echo "nofile=$(ulimit -n)"
        echo "server_cpu=$SERVER_CPU"
        echo "client_cpu=$CLIENT_CPU"
    } >"$T/machine.txt"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
main() {
    local started=$SECONDS
    install_tools
    ulimit -n "$(ulimit -Hn)"
    if ((NICE != 0)); then renice -n "$NICE" -p $$ >/dev/null || log "renice failed; running at nice 0"; fi
    local need=$((MAX_AGENTS + 2 * STREAMS + 200))
    if (($(ulimit -n) < need)); then
        log "open-file limit $(ulimit -n) is below the $need this run needs: --max-agents capped"
        MAX_AGENTS=$(($(ulimit -n) - 2 * STREAMS - 200))
    fi
    local port
    for port in "${ALL_PORTS[@]}"; do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then die "port $port is in use"; fi
    done

    T=$(mktemp -d /tmp/sekisho-tunnel-bench.XXXXXX)
    log "work dir $T"
    : >"$T/results.tsv"
    write_configs
    machine_info
    start iperf3
    start echo
    start_rathole rathole
    start_rathole rathole-tcp
    start_sekisho
    check_paths

    log "warm-up"
    local peer round i n=${#PEERS[@]}
    for peer in "${PEERS[@]}"; do
        taskset -c $CLIENT_CPU timeout 30 iperf3 -c 127.0.0.1 -p "${IPERF_PORT[$peer]}" -t 1 -P 8 \
            >/dev/null 2>&1 || true
    done

    for ((round = 1; round <= ROUNDS; round++)); do
        wait_quiet "round $round"
        log "round $round/$ROUNDS"
        for streams in 1 8; do
            for ((i = 0; i < n; i++)); do
                throughput "$streams" "${PEERS[(i + round - 1) % n]}" "$round"
            done
        done
        for ((i = 0; i < n; i++)); do
            pingpong "${PEERS[(i + round - 1) % n]}" "$round"
        done
    done

    # The throughput peers are done with; the memory runs get fresh processes of their own.
    stop cli-relay-iperf
    stop cli-relay-echo
    stop proxy-relay
    stop cli-iperf
    stop cli-echo
    stop agent
    stop proxy
    stop rathole-tcp-client
    stop rathole-tcp-server
    idle_agents
    reconnect_agents
    failover_agents
    idle_streams

    cleanup_servers
    {
        echo "elapsed=$((SECONDS - started))"
        local w
        for w in "${BUILD_WAITS[@]}"; do echo "build_wait=$w"; done
    } >>"$T/machine.txt"
    python3 "$BENCH/tunnel_report.py" "$T/results.tsv" "$T/machine.txt" ${RESULTS:+--write "$RESULTS"}
    if [[ -n $RESULTS ]]; then log "wrote $RESULTS"; fi
}

cleanup_servers() {
    local name
    for name in "${!PID[@]}"; do stop "$name"; done
}

main
