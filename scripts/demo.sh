#!/usr/bin/env bash
# Installs what tandem needs, builds it, and shows two nodes on this machine
# (node1 on 127.0.0.1, node2 on 127.0.0.2) replicating one directory:
# an application writes through the primary's mount and the secondary has every
# byte; the secondary is killed, writing goes on, and when it comes back only
# what changed is shipped; verify compares both trees by content.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: the demo mounts a file system: run as root" >&2; exit 1; }
scripts/install-deps.sh
. scripts/env.sh
cargo build --release --bin tandem
T="$TANDEM_BIN"

base=$(mktemp -d /tmp/tandem-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    grep -q " $base/node1/app .* - fuse tandem " /proc/self/mountinfo && umount -l "$base/node1/app"
    rm -rf "$base"
}
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))
for n in 1 2; do
    mkdir -p "$base/node$n/app"
    cat > "$base/node$n.toml" <<EOF
[cluster]
name = "demo"
[[node]]
name = "node1"
address = "127.0.0.1"
[[node]]
name = "node2"
address = "127.0.0.2"
[replication]
port = $port
[daemon]
socket = "$base/node$n.sock"
state_dir = "$base/state$n"
tls_dir = "$base/tls"
[[module]]
name = "app"
dirs = ["$base/node$n/app"]
failover = "lb"
EOF
done
echo "written before tandem started" > "$base/node1/app/before.txt"
cp -a "$base/node1/app/before.txt" "$base/node2/app/"

echo "== tandem init: the cluster's CA and one certificate per node"
"$T" init --out "$base/tls" --cluster demo --node node1 --node node2

start() { # node role
    "$T" -c "$base/node$1.toml" daemon --node "node$1" --role "$2" 2>>"$base/daemon$1.log" &
    pids+=($!)
    for _ in $(seq 100); do "$T" -c "$base/node$1.toml" status >/dev/null 2>&1 && return; sleep 0.1; done
    echo "daemon $1 did not start:" >&2; cat "$base/daemon$1.log" >&2; exit 1
}
status() { "$T" -c "$base/node1.toml" status | sed -n '2,3p'; }
wait_peer() { # state
    for _ in $(seq 200); do status | grep -q "peer $1" && return; sleep 0.05; done
}

echo "== node2 waits as secondary, node1 serves as primary (its directory is mounted over)"
start 2 second
start 1 prim
wait_peer connected
status

app="$base/node1/app"
echo "== an application writes through the primary's directory, as it always did"
mkdir "$app/logs"
for i in 1 2 3; do echo "record $i" >> "$app/logs/app.log"; done
dd if=/dev/urandom of="$app/blob" bs=1M count=8 conv=fsync status=none
mv "$app/blob" "$app/blob.bin"
ln -s blob.bin "$app/latest"
chmod 600 "$app/blob.bin"
rm "$app/before.txt"
sync -f "$app/logs/app.log"
sleep 0.5
echo "== the secondary's directory (not mounted; written only by tandem):"
ls -l "$base/node2/app" "$base/node2/app/logs"
diff -r --no-dereference "$app" "$base/node2/app" && echo "identical"

echo "== kill -9 the secondary; the application keeps writing"
kill -9 "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
dd if=/dev/urandom of="$app/blob.bin" bs=4k count=16 seek=100 conv=notrunc,fsync status=none
echo "record 4" >> "$app/logs/app.log"
touch "$app/created-while-alone"
wait_peer alone
status

echo "== the secondary comes back: the resync ships only what changed"
start 2 second
"$T" -c "$base/node1.toml" resync app
status
echo "== tandem verify: both trees compared by content-defined chunks"
"$T" -c "$base/node1.toml" verify app
grep "resync shipped" "$base/daemon1.log" | tail -1 | sed 's/.*resync/resync/'
