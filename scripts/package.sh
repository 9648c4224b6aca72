#!/usr/bin/env bash
# Builds the Debian package tandem_VERSION_ARCH.deb: the release binary as
# /usr/bin/tandem, the systemd unit, the annotated example configuration as the
# conffile /etc/tandem/tandem.toml, manual pages and shell completions made by
# the binary itself, and the Podman and monitoring examples. Then checks it with
# lintian: an error fails the build.
#
#   scripts/package.sh                  build, package into the current directory
#   scripts/package.sh --out DIR        package into DIR
#   scripts/package.sh --bin PATH       package this binary instead of building one
#
# The packaging files (control, maintainer scripts, copyright, changelog) are in
# packaging/debian/; the Debian version is the changelog's, whose upstream part
# must be the binary's own version.
set -euo pipefail
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
out=$PWD
bin=
while (($#)); do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --bin) bin=${2:?--bin needs a path}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
out=$(realpath "$out")
cd "$(dirname "$0")/.."
repo=$PWD
pkg=$repo/packaging/debian

# The tools come from scripts/install-deps.sh, which needs root to install them.
if [ "$(id -u)" = 0 ]; then
    scripts/install-deps.sh
fi
for tool in dpkg-deb dpkg-shlibdeps dpkg-parsechangelog strip lintian; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool is missing: run scripts/install-deps.sh as root" >&2
        exit 1
    }
done

. scripts/env.sh
if [ -z "$bin" ]; then
    cargo build --release --locked -p tandem --bin tandem
    bin=$TANDEM_BIN
fi
upstream=$("$bin" --version | sed -n 's/^tandem //p')
version=$(dpkg-parsechangelog -l "$pkg/changelog" -S Version)
if [ "${version%-*}" != "$upstream" ]; then
    echo "error: packaging/debian/changelog is at $version but the binary is $upstream:" \
         "add a changelog entry for $upstream-1" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)
maintainer=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' "$pkg/changelog" | head -n 1)
# Timestamps of the files and of the compressed ones follow the changelog, so
# that one source gives the same package.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$pkg/changelog" -S Timestamp)
export SOURCE_DATE_EPOCH

work=$CARGO_TARGET_DIR/deb
root=$work/tandem_${version}_$arch
rm -rf "$root"
doc=$root/usr/share/doc/tandem
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/tandem" \
    "$doc/examples" "$root/usr/share/man/man1" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"

# The binary, without its debugging information, as dh_strip leaves it.
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
    -o "$root/usr/bin/tandem" "$bin"
chmod 755 "$root/usr/bin/tandem"

# The unit of config/systemd/ with the packaged binary, and its manual page.
sed -e 's#/usr/local/bin/tandem#/usr/bin/tandem#g' \
    -e '/^Description=/a Documentation=man:tandem-daemon(1) man:tandem(1)' \
    config/systemd/tandem.service >"$root/lib/systemd/system/tandem.service"
grep -q '^ExecStart=/usr/bin/tandem ' "$root/lib/systemd/system/tandem.service" || {
    echo "error: the unit does not start /usr/bin/tandem" >&2
    exit 1
}

install -m 644 config/tandem.toml "$root/etc/tandem/tandem.toml"
"$bin" config check --skip-dir-checks "$root/etc/tandem/tandem.toml" >/dev/null
# Every file the unit's commands name (the binary, the configuration) is in the package.
for path in $(sed -n 's/^Exec[A-Za-z]*=//p' "$root/lib/systemd/system/tandem.service" | grep -o '/[^ ]*'); do
    [ -e "$root$path" ] || { echo "error: the unit names $path, which the package lacks" >&2; exit 1; }
done

"$bin" generate man "$root/usr/share/man/man1"
"$bin" generate completions bash >"$root/usr/share/bash-completion/completions/tandem"
"$bin" generate completions zsh >"$root/usr/share/zsh/vendor-completions/_tandem"
"$bin" generate completions fish >"$root/usr/share/fish/vendor_completions.d/tandem.fish"

install -m 644 "$pkg/copyright" "$doc/copyright"
install -m 644 "$pkg/changelog" "$doc/changelog.Debian"
install -m 644 README.md "$doc/README.md"
cp -r config/podman config/monitoring "$doc/examples/"
install -m 644 config/vip.toml config/cloud-lb.toml "$doc/examples/"
install -D -m 644 config/systemd/README.md "$doc/examples/systemd/README.md"

# Debian policy: manual pages and documentation larger than 4 KiB compressed,
# without names or times in the gzip header; examples stay as they are.
gzip -9n "$root"/usr/share/man/man1/*.1 "$doc/changelog.Debian"
find "$doc" -maxdepth 1 -name '*.md' -size +4k -exec gzip -9n {} +

install -D -m 644 "$pkg/lintian-overrides" "$root/usr/share/lintian/overrides/tandem"

install -m 755 "$pkg/postinst" "$pkg/prerm" "$pkg/postrm" "$root/DEBIAN/"
echo /etc/tandem/tandem.toml >"$root/DEBIAN/conffiles"

# Depends: the packages of the shared libraries the binary links (librocksdb,
# libc…), as dpkg-shlibdeps finds them, which wants a debian/control to read;
# then fuse3, for /dev/fuse's setup (the daemon, as root, mounts with mount(2)
# itself and never runs fusermount3). The daemon runs no other
# program (virtual IPs go through rtnetlink, pings through ICMP sockets): no
# iproute2 or iputils.
shlibs=$work/shlibs
rm -rf "$shlibs" && mkdir -p "$shlibs/debian"
printf 'Source: tandem\n\nPackage: tandem\nArchitecture: any\n' >"$shlibs/debian/control"
depends=$(cd "$shlibs" && dpkg-shlibdeps -O "$root/usr/bin/tandem" | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "error: dpkg-shlibdeps found no library dependencies" >&2; exit 1; }
depends="$depends, fuse3"

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and
# one per directory or link.
size=$(find "$root" -path "$root/DEBIAN" -prune -o -mindepth 1 \
    \( -type f -printf '%s\n' -o -printf '1024\n' \) | awk '{ k += int(($1 + 1023) / 1024) } END { print k }')

sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
    -e "s/@INSTALLED_SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
    "$pkg/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | grep -vx etc/tandem/tandem.toml |
    LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"

find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/tandem_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb (Installed-Size: $size KiB)"

# lintian, as root, first says that it runs as root: not a finding.
set +e
findings=$(lintian --fail-on error --display-info "$deb" 2>&1)
lint=$?
set -e
grep -v 'running with root privileges' <<<"$findings" || true
((lint == 0)) || { echo "error: lintian reports errors in $deb" >&2; exit 1; }
