#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with nightly (cargo-fuzz) and runs each for a while, one after
# the other, on one core: `-jobs=1 -workers=1`.
#
#   scripts/fuzz.sh [--time SECONDS] [--runs N] [--ci] [TARGET...]
#
# --time   seconds per target (default 10); --runs stops a target after N executions instead
#          (whichever comes first).
# --ci     what CI runs (scripts/test.sh): installs cargo-fuzz when missing, builds unoptimised
#          and without a sanitizer (a few minutes instead of a quarter of an hour), and runs
#          each target for 3 s: every target stays buildable and replays its seeds, crashes
#          found earlier included.
# TARGET   any of the targets in fuzz/Cargo.toml (default: all).
#
# Seeds are read from fuzz/corpus/TARGET (committed, never written); what a run discovers goes
# to fuzz/target/corpus/TARGET and crashes to fuzz/artifacts/TARGET/ (both ignored by git). A
# crash's input belongs in the seed corpus once the product is fixed. For each target the
# script prints executions, exec/s, coverage (cov, ft) and crashes from libFuzzer's final
# statistics, and it exits non-zero when any target crashed.
#
# Needs: `rustup toolchain install nightly` and `cargo install cargo-fuzz --locked`.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"
time=10
runs=-1
ci=0
targets=()
while (($#)); do
    case "$1" in
        --time) time="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --ci) ci=1; time=3; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if ((ci)) && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked --quiet
fi

cd "$fuzz"
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

if ((ci)); then
    # Unoptimised (debug assertions and overflow checks on), coverage-guided, no sanitizer.
    cargo +nightly fuzz build --dev --sanitizer none
    bin="$fuzz/target/x86_64-unknown-linux-gnu/debug"
else
    # One build for all targets: release with debug assertions and overflow checks,
    # AddressSanitizer.
    cargo +nightly fuzz build
    bin="$fuzz/target/x86_64-unknown-linux-gnu/release"
fi

crashed=0
printf '%-18s %14s %8s %10s %8s %8s %8s\n' target executions seconds exec/s cov ft crashes
for target in "${targets[@]}"; do
    work="$fuzz/target/corpus/$target"
    artifacts="$fuzz/artifacts/$target"
    log="$fuzz/target/logs/$target.log"
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    before=$(find "$artifacts" -type f | wc -l)
    dict=()
    case "$target" in
        config) dict=(-dict="$fuzz/dict/config.dict") ;;
        path) dict=(-dict="$fuzz/dict/path.dict") ;;
        bearer_jwt) dict=(-dict="$fuzz/dict/jwt.dict") ;;
    esac
    start=$(date +%s)
    status=0
    # With -jobs libFuzzer runs the job in a child that writes fuzz-0.log into the current
    # directory (and copies it to our log at the end): keep it out of the source tree.
    (cd "$(dirname "$log")" && "$bin/$target" "$work" "$fuzz/corpus/$target" \
        -jobs=1 -workers=1 -max_total_time="$time" -runs="$runs" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" -timeout=10 -rss_limit_mb=4096 "${dict[@]}" \
        >"$log" 2>&1) || status=$?
    seconds=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # The last status line (`#N DONE|pulse|NEW cov: X ft: Y ...`) carries the coverage.
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    if ((status != 0)) && ((crashes == 0)); then
        crashes=1 # a failure that left no artifact (an out-of-memory kill, a build problem)
    fi
    printf '%-18s %14s %8s %10s %8s %8s %8s\n' "$target" "${execs:-?}" "$seconds" \
        "${speed:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
    if ((crashes > 0)); then
        crashed=1
        echo "  $target failed (exit $status): see $log and $artifacts/" >&2
        grep -m1 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer' -A3 "$log" >&2 || true
    fi
done
exit "$crashed"
