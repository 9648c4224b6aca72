#!/usr/bin/env bash
# Installs what tandem needs, builds it, and shows the intercepting mount at work:
# a temporary directory is covered by the mount, written through it, and every
# mutation tandem saw is printed; after unmounting, the bare directory holds it all.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: the demo mounts a file system: run as root" >&2; exit 1; }
scripts/install-deps.sh
. scripts/env.sh
cargo build --release --bin tandem

dir=$(mktemp -d /tmp/tandem-demo.XXXXXX)
echo "== a directory with data in it: $dir"
echo "written before the mount" > "$dir/before.txt"
ls -l "$dir"

echo "== tandem mount $dir (over the directory itself)"
"$TANDEM_BIN" mount --print-mutations "$dir" > "$dir.mutations" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir" "$dir.mutations"' EXIT
for _ in $(seq 100); do grep -q " $dir .* - fuse tandem " /proc/self/mountinfo && break; sleep 0.1; done
grep " $dir .* - fuse tandem " /proc/self/mountinfo >/dev/null || { echo "mount did not appear" >&2; exit 1; }
findmnt "$dir" || true

echo "== an application writes through the same path"
cat "$dir/before.txt"
mkdir "$dir/logs"
for i in 1 2 3; do echo "record $i" >> "$dir/logs/app.log"; done
dd if=/dev/urandom of="$dir/blob" bs=64k count=4 conv=fsync status=none
mv "$dir/blob" "$dir/blob.bin"
ln -s blob.bin "$dir/latest"
chmod 600 "$dir/blob.bin"
rm "$dir/before.txt"

echo "== unmount (SIGTERM)"
kill -TERM $pid; wait $pid
echo "== mutations tandem saw:"
cat "$dir.mutations"
echo "== the bare directory afterwards:"
ls -l "$dir" "$dir/logs"
cat "$dir/logs/app.log"
