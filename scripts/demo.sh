#!/usr/bin/env bash
# Installs what tandem needs, builds it, and runs a two-node cluster on this
# machine (node1 on 127.0.0.1, node2 on 127.0.0.2) serving a small application
# that appends fsync'd records to its replicated directory. node1's daemon is
# killed with kill -9: its guard stops the application there, node2 takes over
# within the heartbeat timeout with every record; node1 returns as SECOND and
# is resynchronised with only what changed; `tandem swap` moves the application
# back in order; `tandem verify` compares both trees by content.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: the demo mounts file systems: run as root" >&2; exit 1; }
scripts/install-deps.sh
. scripts/env.sh
cargo build --release --bin tandem
T="$TANDEM_BIN"

base=$(mktemp -d /tmp/tandem-demo.XXXXXX)
pids=(0 0)
cleanup() {
    for p in "${pids[@]}"; do [ "$p" = 0 ] || kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do [ "$p" = 0 ] || wait "$p" 2>/dev/null || true; done
    for n in 1 2; do
        pid=$(cat "$base/side$n/app.pid" 2>/dev/null) && kill -TERM "-$pid" 2>/dev/null || true
        grep -q " $base/node$n/app .* - fuse tandem " /proc/self/mountinfo && umount -l "$base/node$n/app"
    done
    rm -rf "$base"
}
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))

# The application: one fsync'd record every 0.2 s, numbered on from the last one.
cat > "$base/app.sh" <<'EOF'
#!/bin/sh
f="$TANDEM_DIRS/records"
n=$(wc -l < "$f" 2>/dev/null || echo 0)
while :; do
  n=$((n+1))
  echo "record $n written on $TANDEM_NODE" | dd of="$f" oflag=append conv=notrunc,fsync status=none
  sleep 0.2
done
EOF
cat > "$base/start.sh" <<'EOF'
#!/bin/sh
setsid "$APP_BIN" > /dev/null 2>&1 < /dev/null &
echo $! > "$APP_SIDE/app.pid"
echo "application started on $TANDEM_NODE"
EOF
cat > "$base/stop.sh" <<'EOF'
#!/bin/sh
pid=$(cat "$APP_SIDE/app.pid" 2>/dev/null) || exit 0
kill -TERM "-$pid" 2>/dev/null
while ps -o stat= -s "$pid" 2>/dev/null | grep -qv '^Z'; do sleep 0.01; done
rm -f "$APP_SIDE/app.pid"
echo "application stopped on $TANDEM_NODE"
EOF
chmod +x "$base/app.sh" "$base/start.sh" "$base/stop.sh"
for n in 1 2; do
    mkdir -p "$base/node$n/app" "$base/side$n"
    cat > "$base/node$n.toml" <<EOF
[cluster]
name = "demo"
quorum = "none"
[[node]]
name = "node1"
address = "127.0.0.1"
[[node]]
name = "node2"
address = "127.0.0.2"
[heartbeat]
port = $port
interval_ms = 100
timeout_ms = 1000
[replication]
port = $((port + 1))
[daemon]
socket = "$base/node$n.sock"
state_dir = "$base/state$n"
tls_dir = "$base/tls"
[[module]]
name = "app"
dirs = ["$base/node$n/app"]
failover = "lb"
lb_port = $((port + 1 + n))
[module.scripts]
start_prim = "$base/start.sh"
stop_prim = "$base/stop.sh"
timeout_s = 10
EOF
done
echo "the application's first data, written before tandem started" > "$base/node1/app/README"

echo "== tandem init: the cluster's CA, one certificate per node, the heartbeat key"
"$T" -c "$base/node1.toml" init

start() { # node
    APP_SIDE="$base/side$1" APP_BIN="$base/app.sh" \
        "$T" -c "$base/node$1.toml" daemon --node "node$1" 2>>"$base/daemon$1.log" &
    pids[$1-1]=$!
}
state() { "$T" -c "$base/node$1.toml" status --json 2>/dev/null |
    sed -n 's/.*"state": *"\([A-Z]*\)".*/\1/p' | head -1; }
uptodate() { "$T" -c "$base/node$1.toml" status --json 2>/dev/null | grep -q '"uptodate": true'; }
wait_for() { # node state [uptodate]
    for _ in $(seq 300); do
        [ "$(state "$1")" = "$2" ] && { [ -z "${3:-}" ] || uptodate "$1"; } && return
        sleep 0.05
    done
    echo "node$1 did not become $2:" >&2; cat "$base/daemon$1.log" >&2; exit 1
}
show() { for n in 1 2; do echo "-- node$n"; "$T" -c "$base/node$n.toml" status | sed -n '3,5p'; done; }

echo "== both daemons start: node1 (listed first) serves, node2 follows by full sync"
start 1
start 2
wait_for 1 PRIM
wait_for 2 SECOND uptodate
sleep 1
show

echo "== kill -9 node1's daemon: its guard stops the application there; node2 takes over"
t0=$(date +%s%N)
kill -9 "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids[0]=0
wait_for 2 ALONE
echo "node2 serves $(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill (heartbeat timeout 1000 ms)"
sleep 1
tail -3 "$base/node2/app/records"

echo "== node1 comes back: it follows as SECOND and gets only what changed"
start 1
wait_for 1 SECOND uptodate
show
grep "resync shipped" "$base/daemon2.log" | tail -1 | sed 's/.*resync/resync/'

echo "== tandem swap, asked on node1: stop on node2, flush, then start on node1"
"$T" -c "$base/node1.toml" swap app
wait_for 1 PRIM
wait_for 2 SECOND uptodate
sleep 1
tail -3 "$base/node1/app/records"
show

echo "== what a load balancer's health check sees (GET /primary/app on each node's lb_port)"
for n in 1 2; do
    exec 3<>"/dev/tcp/127.0.0.1/$((port + 1 + n))"
    printf 'GET /primary/app HTTP/1.0\r\n\r\n' >&3
    echo "node$n: $(head -1 <&3 | tr -d '\r')"
    exec 3<&-
done

echo "== tandem verify: both trees compared by content-defined chunks"
"$T" -c "$base/node1.toml" verify app
echo "== the module's log on node1"
"$T" -c "$base/node1.toml" log app | tail -8
