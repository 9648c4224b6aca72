#!/usr/bin/env bash
# Runs every test: unit tests, then the integration tests that mount real FUSE
# file systems (root and /dev/fuse required; they fail, never skip, without them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: the tests mount file systems: run as root" >&2; exit 1; }
scripts/install-deps.sh
. scripts/env.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads=4
