#!/usr/bin/env bash
# Installs the system packages tandem needs to build, test and benchmark, and
# nothing when they are already present. Run as root on Debian 12.
set -euo pipefail

packages=(
  librocksdb-dev                  # the change log's store, linked rather than compiled
  clang libclang-dev pkg-config   # bindings to RocksDB's C API (bindgen needs libclang)
  fuse3                           # /dev/fuse helpers and the fuse kernel module config
  fio rsync                       # benchmarks against the bare directory and rsync
  psmisc                          # fuser/killall for diagnosing busy mounts
  procps                          # ps: the cluster tests' application scripts
  iproute2                        # ip netns: the partition tests build their own networks
  acl                             # setfacl/getfacl: the tests check ACLs through the mount
  etcd-server etcd-client         # quorum = "etcd": the tests start a real etcd (etcdctl sets up its users)
  ca-certificates                 # the CAs an https checker trusts by default
  haproxy keepalived              # LB mode and the VIP failover comparison
  python3                         # the test application's network service, the benchmarks
  podman busybox-static           # the demo's container (an image built from busybox)
  systemd                         # systemd-analyze verify of the unit
  chromium chromium-driver        # the web console's test in a headless browser
  dpkg-dev binutils lintian       # scripts/package.sh: dependencies from the libraries linked, strip, lint
  debootstrap                     # tests/package.rs installs the package in a fresh Debian root
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust 1.87 or newer) is required; install it with rustup" >&2
  exit 1
fi
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
  echo "error: /dev/fuse is missing: the fuse kernel module is required" >&2
  exit 1
fi
