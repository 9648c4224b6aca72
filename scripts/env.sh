# Sourced by the scripts: one persistent build directory outside the checkout, so
# a second run (and CI) rebuilds only what changed.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tandem-target}"
export TANDEM_BIN="$CARGO_TARGET_DIR/release/tandem"
