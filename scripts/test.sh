#!/usr/bin/env bash
# Runs every test: unit tests, then the integration tests that mount real FUSE
# file systems (root and /dev/fuse required; they fail, never skip, without them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: the tests mount file systems: run as root" >&2; exit 1; }
scripts/install-deps.sh
. scripts/env.sh
cargo build --release --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Every test binary runs even after one fails: a failure early on hides nothing.
cargo test --release --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# A short fuzzing run of every decoder of outside input (scripts/fuzz.sh).
scripts/fuzz.sh "${TANDEM_FUZZ_SECONDS:-20}" 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary; each fuzz
# target counts as one test).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
((status == 0)) || exit "$status"
exit "$fuzz_status"
