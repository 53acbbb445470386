#!/bin/bash
# Builds every fuzz target once, with libFuzzer's coverage instrumentation
# (the flags `cargo fuzz build -s none` passes; Debian's stable rustc via
# RUSTC_BOOTSTRAP, no cargo-fuzz, no sanitizer runtime), then runs each for
# a bounded time. Each target starts from its working corpus (corpus/T,
# not tracked) and its tracked seeds (seeds/T: valid inputs and every input
# that ever crashed it, so those are regression tests run on every call).
# A crash lands in artifacts/T and fails the script. One line per target
# gives executions and coverage (libFuzzer's cov:/ft:).
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]   (default 10, all)
set -eu
SECONDS_PER_TARGET=${1:-10}
shift || true
# The targets, one per parser family of untrusted input (docs/testing.md).
ALL_TARGETS="xenstore rings netback netfront blkfront vpn hosted fdt cmdline \
vchan rule_parser packet_path wg_decoder wg_config dhcp qubesdb qrexec \
xenstored_decode xenstored_sequence"
TARGETS=${*:-$ALL_TARGETS}
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# An explicit --target keeps RUSTFLAGS away from build scripts.
HOST=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$HOST"
failed=""
for target in $TARGETS; do
    mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target"
    log="$CARGO_TARGET_DIR/fuzz-$target.log"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: bounded memory.
    "$CARGO_TARGET_DIR/$HOST/release/$target" -max_total_time="$SECONDS_PER_TARGET" \
        -timeout=10 -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" \
        -print_final_stats=1 "corpus/$target" "seeds/$target" > "$log" 2>&1 || true
    done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    printf '%-12s %4ss  execs %-10s %s\n' "$target" "$SECONDS_PER_TARGET" "${execs:-?}" \
        "$(echo "$done_line" | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)"
    found=$(ls "artifacts/$target" | grep -E '^(crash|timeout|oom|leak|slow-unit)-' || true)
    if [ -n "$found" ] || [ -z "$execs" ]; then
        grep -E "panicked|ERROR|SUMMARY|Test unit written" -A2 "$log" | head -20
        echo "$target: FAILED, see artifacts/$target and $log"
        failed="$failed $target"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz failures:$failed"
    exit 1
fi
