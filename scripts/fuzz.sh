#!/usr/bin/env bash
# Fuzzes every decoder of what another machine or an operator writes: replication
# frames, what the applier makes of them, heartbeats, witness asks, the
# configuration and the load balancer's requests. Each target runs SECONDS
# (default 20) from seeds made by the tests; the corpus grows in the build
# directory from run to run. A crash fails the run and leaves its input in
# $CARGO_TARGET_DIR/fuzz/artifacts/TARGET/: add it to tests/robustness.rs.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
secs=${1:-20}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(frame apply heartbeat witness config lb_request)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2
fi
fuzz_target="$CARGO_TARGET_DIR/fuzz"
work="$fuzz_target/work"
rm -rf "$work/tmp"
mkdir -p "$work/tmp"
# libFuzzer and the targets build with stable Rust when no sanitizer is asked
# for; the targets are safe Rust, checked by their assertions and by overflow
# and debug assertions, which this build keeps on.
build=(--fuzz-dir fuzz --sanitizer none --target-dir "$fuzz_target")
cargo fuzz build "${build[@]}"

seeds="$work/seeds"
rm -rf "$seeds"
TANDEM_FUZZ_SEEDS="$seeds" cargo test --release --quiet --test robustness fuzz_seeds_are_valid_inputs >/dev/null

passed=0 failed=0
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$fuzz_target/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$work/$t.log"
  # The apply target mounts its sandbox in a mount namespace of its own (so
  # nothing is left mounted), on a directory under $TMPDIR.
  if TMPDIR="$work/tmp" cargo fuzz run "${build[@]}" "$t" "$corpus" "$seeds/$t" -- \
      -max_total_time="$secs" -artifact_prefix="$artifacts/" -print_final_stats=1 \
      -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    echo "fuzz $t: ok, ${runs:-?} inputs in ${secs}s, corpus $(ls "$corpus" | wc -l)"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED (log $log, input in $artifacts/)"
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 || true
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
