#!/usr/bin/env bash
# A Podman container kept available on two servers, in four steps:
#   1. the container on server 1 serves and writes into its replicated volume;
#      the files land on server 2;
#   2. server 1 is lost (its daemon, guard and container killed at once, its
#      network gone): the virtual IP moves and the container runs on server 2
#      with every acknowledged write;
#   3. server 1 comes back: it is resynchronised with only what changed while
#      the container keeps serving on server 2;
#   4. `tandem swap` returns the container to server 1 in order, and
#      `tandem verify` finds both trees identical;
# and then a container that exits at once on server 1: restarted there twice,
# then moved to server 2.
# The servers, a witness and a client are network namespaces on one bridge
# (10.0.0.1, .2, .3 and .9; the virtual IP 10.0.0.100); they run tandem with
# config/podman/ as an administrator would, and a locally built image (no
# registry). The client writes through the virtual IP all along and logs every
# write the service acknowledged; each step checks that none is missing, that the
# container runs on one server only, and that the virtual IP answers from it.
#
#   scripts/demo.sh           install what is needed, build, run the four steps
#   scripts/demo.sh --keep    leave the cluster running afterwards, to explore
#   scripts/demo.sh --cleanup DIR   remove what a --keep run left in DIR
#
# TANDEM_DEMO_BIN=PATH skips installing and building and runs that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
keep=0
case "${1:-}" in
    "") ;;
    --keep) keep=1 ;;
    --cleanup)
        [ -f "${2:-}/demo.env" ] || { echo "error: --cleanup: ${2:-(none)} holds no demo" >&2; exit 2; }
        base=$2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "error: the demo mounts file systems and makes namespaces: run as root" >&2; exit 1; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
began=$(now_ms)
say() { printf '\n[%s s] == %s\n' "$(awk -v t=$(( $(now_ms) - began )) 'BEGIN { printf "%6.1f", t / 1000 }')" "$*"; }
fail() {
    echo "DEMO FAILED: $*" >&2
    for n in 1 2; do
        [ -f "${base:-}/node$n/daemon.log" ] || continue
        echo "--- the end of server $n's daemon log" >&2
        tail -15 "$base/node$n/daemon.log" >&2
    done
    exit 1
}

# Everything the demo makes is written down in demo.env as it is made, so that
# cleanup (on exit, Ctrl-C, failure, or --cleanup after --keep) undoes just that.
cleanup() {
    set +e
    [ -n "${base:-}" ] && [ -f "$base/demo.env" ] || return 0
    # shellcheck disable=SC1091
    . "$base/demo.env"
    [ -n "${client:-}" ] && kill "$client" 2>/dev/null
    # Daemons stop cleanly (the container stops, the mounts go), or are killed.
    for p in ${daemons:-}; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 100); do
        alive=0; for p in ${daemons:-}; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break; sleep 0.1
    done
    for p in ${daemons:-} ${others:-}; do kill -9 "$p" 2>/dev/null; done
    for n in 1 2; do
        [ -x "$base/node$n/podman" ] && "$base/node$n/podman" rm --force --ignore --time 0 web >/dev/null 2>&1
    done
    grep -o " $base/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    for ns in ${namespaces:-}; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$base"
    return 0
}
if [ "$keep" = 0 ] && [ -n "${base:-}" ]; then cleanup; echo "removed $base"; exit 0; fi
trap 'status=$?; trap - EXIT; if [ $keep = 1 ] && [ $status = 0 ]; then exit 0; fi; cleanup; exit $status' EXIT
trap 'exit 130' INT TERM

if [ -n "${TANDEM_DEMO_BIN:-}" ]; then
    T=$TANDEM_DEMO_BIN
else
    say "installing what is needed and building tandem"
    scripts/install-deps.sh
    . scripts/env.sh
    cargo build --release --bin tandem
    T=$TANDEM_BIN
fi
base=$(mktemp -d /tmp/tandem-demo.XXXXXX)
echo "working in $base"
record() { echo "$1=\"\${$1:-} $2\"" >> "$base/demo.env"; }
: > "$base/demo.env"
id="tdm$$"
s1="${id}s1" s2="${id}s2" wit="${id}w" cl="${id}c" sw="${id}sw"
ns_of() { [ "$1" = 1 ] && echo "$s1" || echo "$s2"; }
VIP=10.0.0.100

say "the network: servers 10.0.0.1 and .2, witness .3 and client .9 on one bridge"
for ns in "$s1" "$s2" "$wit" "$cl" "$sw"; do
    ip netns add "$ns"; record namespaces "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
i=0
for pair in "$s1 10.0.0.1" "$s2 10.0.0.2" "$wit 10.0.0.3" "$cl 10.0.0.9"; do
    set -- $pair
    ip -n "$1" link add eth0 type veth peer name "p$i" netns "$sw"
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$sw" link set "p$i" master br0
    ip -n "$sw" link set "p$i" up
    i=$((i + 1))
done

say "the container image, built here from busybox (no registry), on both servers"
mkdir -p "$base/image/bin" "$base/image/www" "$base/image/data"
cp "$(command -v busybox)" "$base/image/bin/busybox"
for a in sh httpd sync echo printf kill sleep cat; do ln -s busybox "$base/image/bin/$a"; done
cat > "$base/image/bin/serve" <<'EOF'
#!/bin/sh
# The service: busybox httpd on port 8080 serving /www and its CGI scripts;
# stops cleanly on SIGTERM (as PID 1 it would otherwise ignore it).
# A configuration that names this node makes it exit at once (a broken
# container, for the demo's last step).
if [ -e "/www/crash-on-$TANDEM_NODE" ]; then
    echo "crash-on-$TANDEM_NODE: exiting at once" >&2; exit 1
fi
httpd -f -p 8080 -h /www & pid=$!
trap 'kill $pid; wait $pid; exit 0' TERM INT
wait $pid
EOF
chmod +x "$base/image/bin/serve"
tar -C "$base/image" -cf "$base/image.tar" .

# Podman on a server needs nothing more than its own storage here (two servers
# share one machine). Where podman cannot run containers as it is (a sandbox
# without cgroup v2 or without the right to raise rlimits), each call goes through
# a private mount namespace with a cgroup v2 hierarchy, no cgroups for the
# container, and a runtime wrapper that drops the rlimits it cannot set.
cat > "$base/crun" <<'EOF'
#!/bin/sh
bundle=""; prev=""
for a in "$@"; do case "$prev" in --bundle|-b) bundle=$a ;; esac; prev=$a; done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
    python3 -c 'import json,sys; p=sys.argv[1]; c=json.load(open(p)); c["process"].pop("rlimits",None); json.dump(c,open(p,"w"))' "$bundle/config.json"
fi
exec crun --cgroup-manager=disabled "$@"
EOF
chmod +x "$base/crun"
podman_for() { # node sandboxed
    local d="$base/node$1/containers"
    mkdir -p "$d"
    if [ "$2" = 0 ]; then
        printf '#!/bin/sh\nexec podman --root %s/root --runroot %s/run "$@"\n' "$d" "$d"
    else
        cat <<EOF
#!/bin/sh
[ "\$1" = run ] && { shift; set -- run --cgroups=disabled "\$@"; }
exec unshare -m sh -c 'umount -l /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 none /sys/fs/cgroup && exec "\$0" "\$@"' \\
    podman --root $d/root --runroot $d/run --runtime $base/crun --cgroup-manager=cgroupfs "\$@"
EOF
    fi > "$base/node$1/podman"
    chmod +x "$base/node$1/podman"
}
podman_for 1 0
"$base/node1/podman" import --quiet "$base/image.tar" localhost/tandem-demo:1 >/dev/null
if ! err=$("$base/node1/podman" run --rm --network none localhost/tandem-demo:1 /bin/sh -c true 2>&1); then
    echo "podman cannot run containers here as it is ($(echo "$err" | tail -1 | cut -c1-100)):"
    echo "running it with a cgroup v2 hierarchy of its own and no rlimits"
    sandboxed=1
else
    sandboxed=0
fi
for n in 1 2; do
    podman_for $n $sandboxed
    "$base/node$n/podman" import --quiet "$base/image.tar" localhost/tandem-demo:1 >/dev/null
    "$base/node$n/podman" run --rm --network none localhost/tandem-demo:1 /bin/sh -c true ||
        fail "podman cannot run the image on server $n"
done

say "tandem's configuration: config/podman/podman.toml, with this machine's paths"
for n in 1 2; do
    mkdir -p "$base/node$n/srv/web/data" "$base/node$n/srv/web/config"
    sed -e "s|/srv/web|$base/node$n/srv/web|g" -e "s|/etc/tandem/podman|$repo/config/podman|g" \
        -e 's|^timeout_s = 40|timeout_s = 20|' config/podman/podman.toml > "$base/node$n.toml"
    cat >> "$base/node$n.toml" <<EOF

[daemon]
state_dir = "$base/node$n/state"
socket = "$base/node$n/tandem.sock"
tls_dir = "$base/tls"
EOF
done
# The application's files before tandem starts: its web pages and the CGI
# script that appends each record it is sent, durably, and names the server.
c="$base/node1/srv/web/config"
mkdir -p "$c/cgi-bin"
echo "tandem demo" > "$c/index.html"
cat > "$c/cgi-bin/record" <<'EOF'
#!/bin/sh
if echo "$QUERY_STRING $TANDEM_NODE" >> /data/records && sync -d /data/records; then
    printf 'Content-Type: text/plain\r\n\r\n%s %s\n' "$QUERY_STRING" "$TANDEM_NODE"
else
    printf 'Status: 500 Internal Server Error\r\n\r\nnot written\n'
fi
EOF
chmod +x "$c/cgi-bin/record"
echo "written before tandem started" > "$base/node1/srv/web/data/README"
"$T" -c "$base/node1.toml" config check "$base/node1.toml" >/dev/null
"$T" -c "$base/node1.toml" init >/dev/null

start_daemon() { # node
    local ns; ns=$(ns_of "$1")
    PODMAN="$base/node$1/podman" IMAGE=localhost/tandem-demo:1 COMMAND=/bin/serve \
        DATA_MOUNT=/data CONFIG_MOUNT=/www STOP_TIMEOUT=5 NETWORK="--network ns:/run/netns/$ns" \
        nsenter --net="/run/netns/$ns" "$T" -c "$base/node$1.toml" daemon --node "node$1" \
        >> "$base/node$1/daemon.log" 2>&1 &
    eval "daemon$1=$!"
    record daemons $!
    disown $!
}
state() { "$T" -c "$base/node$1.toml" status --json 2>/dev/null |
    sed -n 's/.*"state": *"\([A-Z]*\)".*/\1/p' | head -1; }
uptodate() { "$T" -c "$base/node$1.toml" status --json 2>/dev/null | grep '"uptodate": *true' >/dev/null; }
wait_for() { # node state... [uptodate]
    local n=$1 want=$2 up=${3:-}
    for _ in $(seq 600); do
        case " $want " in *" $(state "$n") "*) { [ -z "$up" ] || uptodate "$n"; } && return ;; esac
        sleep 0.05
    done
    tail -20 "$base/node$n/daemon.log" >&2
    fail "server $n did not become $want${up:+ and up to date} within 30 s (it is $(state "$n"))"
}
running_on() { # the servers where the container's process is alive
    local pid
    for n in 1 2; do
        # (podman's own record of a container whose processes were killed with
        # their server stays "running": the process is what counts.)
        pid=$("$base/node$n/podman" inspect --format '{{.State.Pid}}' web 2>/dev/null) || continue
        [ "${pid:-0}" -gt 0 ] && kill -0 "$pid" 2>/dev/null && echo -n "$n "
    done; echo
}
# (A server whose network is down holds nothing that counts.)
vip_on() { for n in 1 2; do ip -n "$(ns_of $n)" -o addr show up | grep " $VIP/" >/dev/null && echo -n "$n "; done; echo; }
ask_vip() { ip netns exec "$cl" python3 - "$VIP" <<'EOF'
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:8080/cgi-bin/record?probe", timeout=2).read().decode().split()[-1])
EOF
}
missing_on() { # node: how many acknowledged writes its copy lacks
    awk 'NR == FNR { have[$1] = 1; next } !($1 in have)' \
        "$base/node$1/srv/web/data/records" "$base/acked" | wc -l
}
# After each step: the container on server $1 only, the virtual IP there only
# and answering from it, and every acknowledged write in its volume.
check() { # serving-node
    local n=$1 on vip answer missing
    for _ in $(seq 100); do [ "$(running_on)" = "$n " ] && break; sleep 0.1; done
    on=$(running_on); [ "$on" = "$n " ] || fail "the container runs on server(s) '$on', expected $n only"
    vip=$(vip_on)
    [ "$vip" = "$n " ] || fail "the virtual IP is on server(s) '$vip', expected $n only:
$(ip -n "$s1" -o addr show; ip -n "$s2" -o addr show)"
    answer=$(ask_vip) || fail "the virtual IP does not answer"
    [ "$answer" = "node$n" ] || fail "the virtual IP answered from $answer, expected node$n"
    sleep 0.3
    missing=$(missing_on "$n")
    [ "$missing" = 0 ] || fail "$missing acknowledged writes are missing on server $n"
    echo "checked: container on server $n only, virtual IP answers from it," \
        "$(wc -l < "$base/acked") acknowledged writes all there"
}

say "step 0: tandem starts on both servers, with the witness on .3"
nsenter --net="/run/netns/$wit" "$T" -c "$base/node1.toml" witness --state "$base/witness.json" \
    >> "$base/witness.log" 2>&1 &
record others $!
disown $!
start_daemon 1
start_daemon 2
wait_for 1 PRIM
wait_for 2 SECOND uptodate
"$T" -c "$base/node1.toml" status

say "step 1: the container serves on server 1; a client writes through the virtual IP"
# The client: one write every 50 ms through the virtual IP, each logged once the
# service acknowledged it (it is then on disk on both servers).
cat > "$base/client.py" <<'EOF'
import sys, time, urllib.request
vip, acked, stop = sys.argv[1:4]
n, last_ok, longest = 0, None, 0.0
with open(acked, "a") as log:
    while True:
        try:
            open(stop).close()
            break
        except FileNotFoundError:
            pass
        n += 1
        try:
            body = urllib.request.urlopen(f"http://{vip}:8080/cgi-bin/record?{n}", timeout=0.5).read().decode()
            if body.split()[0] == str(n):
                now = time.monotonic()
                if last_ok is not None and now - last_ok > longest:
                    longest = now - last_ok
                    with open(acked + ".outage", "w") as f:
                        f.write(f"{longest * 1000:.0f}\n")
                last_ok = now
                log.write(body)
                log.flush()
        except Exception:
            pass
        time.sleep(0.05)
EOF
: > "$base/acked"
ip netns exec "$cl" python3 "$base/client.py" "$VIP" "$base/acked" "$base/client.stop" &
client=$!; echo "client=$client" >> "$base/demo.env"
for _ in $(seq 100); do [ -s "$base/acked" ] && break; sleep 0.1; done
sleep 2
check 1
"$T" -c "$base/node2.toml" status --json | grep '"uptodate": *true' >/dev/null || fail "server 2 is not up to date"
missing=$(missing_on 2)
echo "on server 2 already: $(wc -l < "$base/node2/srv/web/data/records") records," \
    "every acknowledged one but $missing (the last ones may still be in flight)"
tail -2 "$base/node2/srv/web/data/records"

say "step 2: server 1 is lost: its daemon, guard and container killed at once, its network gone"
rm -f "$base/acked.outage"
victims="$daemon1 $(pgrep -P "$daemon1" | tr '\n' ' ')$("$base/node1/podman" inspect \
    --format '{{.State.Pid}} {{.State.ConmonPid}}' web)"
t0=$(now_ms)
kill -9 $victims 2>/dev/null || true
ip -n "$s1" link set eth0 down
wait_for 2 "ALONE PRIM"
for _ in $(seq 300); do [ "$(running_on)" = "2 " ] && break; sleep 0.05; done
took=$(( $(now_ms) - t0 ))
sleep 2
check 2
echo "the container runs on server 2 ${took} ms after the loss"
echo "outage seen by the client (longest wait between two acknowledged writes):" \
    "$(cat "$base/acked.outage" 2>/dev/null || echo '?') ms (heartbeat timeout 1500 ms)"

say "step 3: server 1 comes back: only what changed is sent, the container keeps serving on server 2"
before=$(wc -l < "$base/acked")
ip -n "$s1" link set eth0 up
start_daemon 1
wait_for 1 SECOND uptodate
wait_for 2 PRIM
sleep 1
check 2
shipped=$(grep "resync shipped" "$base/node2/daemon.log" | tail -1 | sed 's/.*resync shipped \([0-9]*\) bytes.*/\1/')
echo "resync shipped ${shipped:-?} bytes to server 1, of $(du -sb "$base/node2/srv/web" | cut -f1) in the module"
echo "$(( $(wc -l < "$base/acked") - before )) more writes acknowledged during the resync"
# Before the resync wrote into it, server 1 kept a snapshot of its copy.
"$T" -c "$base/node1.toml" snapshot list web
"$T" -c "$base/node1.toml" snapshot list web --json | grep -q '"kind":"before-resync"' ||
    fail "server 1 took no snapshot before the resync"

say "step 4: tandem swap returns the container to server 1, in order"
t0=$(now_ms)
"$T" -c "$base/node1.toml" swap web
wait_for 1 PRIM
wait_for 2 SECOND uptodate
echo "swapped in $(( $(now_ms) - t0 )) ms"
sleep 1
check 1
touch "$base/client.stop"; wait "$client" 2>/dev/null || true
sed -i '/^client=/d' "$base/demo.env"
sleep 0.5
"$T" -c "$base/node1.toml" verify web || fail "tandem verify found differences"
check 1
"$T" -c "$base/node1.toml" status
"$T" -c "$base/node1.toml" log web | tail -12
say "the four steps succeeded ($(wc -l < "$base/acked") writes acknowledged, none lost)"

say "and a container that keeps crashing: restarted in place twice, then moved to server 2"
# Its configuration now makes it exit at once on server 1; it crashes.
touch "$base/node1/srv/web/config/crash-on-node1"
t0=$(now_ms)
"$base/node1/podman" kill web >/dev/null
wait_for 2 "ALONE PRIM"
check 2
restarts=$("$T" -c "$base/node1.toml" log web | grep -c "restarting the application" || true)
echo "moved to server 2 $(( $(now_ms) - t0 )) ms after the crash, after $restarts restarts on server 1"
[ "$restarts" = 2 ] || fail "expected 2 restarts on server 1 before the move, saw $restarts"
"$T" -c "$base/node1.toml" log web | grep -E "check|restart|Prim|Second" | tail -6
wait_for 1 SECOND uptodate
"$T" -c "$base/node2.toml" verify web || fail "tandem verify found differences"

say "all steps succeeded"
if [ "$keep" = 1 ]; then
    echo "the cluster keeps running; try:"
    echo "  $T -c $base/node1.toml status"
    echo "  ip netns exec $cl wget -qO- http://$VIP:8080/"
    echo "remove it with: scripts/demo.sh --cleanup $base"
fi
