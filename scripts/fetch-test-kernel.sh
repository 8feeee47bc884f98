#!/bin/sh
# Fetches Debian's own amd64 kernel and the few modules the guest tests load (virtio, virtio-blk, ext4,
# 9p over virtio, virtio-fs) into a cache folder, once: test/e2e/guest-persona.test.ts and
# scripts/bench/guest-share-bench.sh boot it under QEMU with a busybox initramfs they build themselves.
# The version is the one Debian's `linux-image-amd64` metapackage depends on today (apt-cache depends),
# so a fresh machine gets a kernel that matches its package lists. Called by install-test-deps.sh.
#   CARRYON_TEST_KERNEL_DIR  the cache (default: REPO/.cache/test-kernel, git-ignored)
# Layout: DIR/current holds the version; DIR/VERSION/vmlinuz; DIR/VERSION/modules/NAME.ko.
# A missing kernel is a test failure, never a skip: this script exits non-zero when it cannot fetch one.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CARRYON_TEST_KERNEL_DIR:-$repo/.cache/test-kernel}
die() { echo "fetch-test-kernel: $*" >&2; exit 1; }
current() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n 1; }
ver=$(current)
if [ -z "$ver" ]; then # a fresh machine may have no package lists yet
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || true
  ver=$(current)
fi
[ -n "$ver" ] || die "apt-cache knows no linux-image-amd64: run apt-get update (Debian amd64 only)"
# The modules, in the order the guest's /init loads them (each after what it depends on, from the .ko's
# own "depends=" field).
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4 netfs fscache 9pnet 9pnet_virtio 9p fuse virtiofs"
if [ -f "$dir/$ver/vmlinuz" ] && [ -f "$dir/$ver/modules/virtiofs.ko" ]; then
  echo "$ver" > "$dir/current"
  echo "fetch-test-kernel: $ver already in $dir"
  exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d "$dir/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work" # apt-get download runs as _apt when it can
(cd "$work" && apt-get download -q "linux-image-$ver" >/dev/null 2>&1) || die "apt-get download linux-image-$ver failed (network? apt-get update?)"
dpkg -x "$work"/linux-image-*.deb "$work/x"
mkdir -p "$work/out/modules"
cp "$work/x/boot/vmlinuz-$ver" "$work/out/vmlinuz"
for m in $mods; do
  f=$(find "$work/x/lib/modules/$ver/kernel" -name "$m.ko" | head -n 1)
  [ -n "$f" ] || die "module $m.ko is not in linux-image-$ver"
  cp "$f" "$work/out/modules/"
done
echo "$mods" > "$work/out/modules/order"
rm -rf "${dir:?}/$ver"
mv "$work/out" "$dir/$ver"
# Kernels an older run fetched (Debian moved on since) are of no more use.
for old in "$dir"/*-amd64; do [ "$old" = "$dir/$ver" ] || rm -rf "$old"; done
echo "$ver" > "$dir/current"
echo "fetch-test-kernel: $ver in $dir/$ver ($(du -sh "$dir/$ver" | cut -f1))"
