# Sourced by the scripts: one persistent build directory outside the checkout, so
# the bundled RocksDB (about 13 minutes on two cores) is built once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tandem-target}"
export TANDEM_BIN="$CARGO_TARGET_DIR/release/tandem"
