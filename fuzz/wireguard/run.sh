#!/bin/bash
# Builds the WireGuard fuzz targets with libFuzzer's coverage instrumentation
# (the flags `cargo fuzz build -s none` would pass; Debian's rustc via
# RUSTC_BOOTSTRAP) and runs each for a bounded time. Crashes land in
# fuzz/wireguard/artifacts/ and make the script fail.
#
# Usage: fuzz/wireguard/run.sh [SECONDS_PER_TARGET]      (default 30)
set -eu
SECONDS_PER_TARGET=${1:-30}
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# An explicit --target keeps RUSTFLAGS away from build scripts.
HOST=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$HOST"
for target in wg_decoder wg_config; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "== $target for ${SECONDS_PER_TARGET}s"
    "$CARGO_TARGET_DIR/$HOST/release/$target" -max_total_time="$SECONDS_PER_TARGET" \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 "corpus/$target" 2>&1 \
        | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==|.*(panicked|ERROR|crash))" || true
    if ls "artifacts/$target"/crash-* > /dev/null 2>&1; then
        echo "$target: crash found, see artifacts/$target"
        exit 1
    fi
done
