#!/usr/bin/env bash
# Installs the Debian tools the test suite drives as real peers: mke2fs/debugfs (e2fsprogs) build and
# edit ext4 fixtures, qemu-io writes into disk images as a VM would (also over NBD), nbdcopy/nbdinfo
# (libnbd-bin) and qemu-img read `carryon serve` exports back, cmp compares, and zstd checks that our
# frames are standard. nbdkit and qemu-nbd (qemu-utils) are the NBD servers scripts/bench compares with.
# chromium runs the admin console's end-to-end tests (driven by the playwright-core npm package; its own
# browser download is not used). openssl makes the TLS tests' CAs and certificates; script (bsdutils)
# gives the login prompt test a terminal. GNU time (/usr/bin/time) reports a CLI run's peak memory in the
# hostile-server tests. nbdfuse (libnbd-bin) and fusermount3 (fuse3) show `carryon serve --file`'s
# export as a plain file in a FUSE mount (the serve --file tests; they also need /dev/fuse). gocryptfs keeps an
# encrypted copy's persona encrypted at rest, mounted through FUSE (test/e2e/persona-vault.test.ts). python3, make
# and a C compiler (build-essential) let `npm ci` build native/xts, the disk cipher's addon, with node-gyp
# (test/unit/crypto/native-xts.test.ts fails if the cipher fell back to JavaScript). The benchmark peers (rsync, rdiff, casync) come along so that
# scripts/bench runs on the same machine. postgresql (Debian's 15) runs the PostgreSQL metadata tests: scripts/pg.sh
# starts a private cluster with its initdb and pg_ctl (test/conformance/sql-postgres.test.ts, meta-postgres.test.ts).
# ceph-mon, ceph-osd and radosgw (Ceph's S3 gateway) are the real object store S3BlockStore is tested and
# benchmarked against: scripts/rgw.sh starts a private one-node cluster on 127.0.0.1
# (test/conformance/s3-block-store.test.ts, scripts/bench/s3-bench.ts); curl creates its bucket. haproxy is the
# load balancer in front of two server instances (scripts/scale-out.sh, test/e2e/scale-out.test.ts).
# qemu-system-x86 boots a real Linux guest (Debian's own kernel, fetched once by scripts/fetch-test-kernel.sh
# into .cache/test-kernel) from a busybox-static initramfs that cpio packs: the guest mounts the persona's
# profile over 9p and runs guest/linux's logon/logoff scripts (test/e2e/guest-persona.test.ts,
# scripts/bench/guest-share-bench.sh, which also uses virtiofsd from qemu-system-common). qemu-storage-daemon
# (qemu-system-common, with qemu-system-x86) exports qcow2/VMDK/VHDX/VDI/VHD images as raw files through FUSE
# for `image publish` and `image export` (server/image-format.ts).
# libfuse3-dev and pkg-config let `npm ci` build native/persona-fuse, the streamed persona's FUSE helper
# (test/e2e/persona-stream.test.ts mounts a profile through it with fusermount3 from fuse3).
# hivexregedit (libwin-hivex-perl, on Debian's hivex library) and hivexsh (libhivex-bin) read and write
# Windows registry hives (NTUSER.DAT) for `carryon persona reg import/export` (test/e2e/persona-hive.test.ts,
# test/unit/hive.test.ts); xz unpacks the real NTUSER.DAT fixture (test/fixtures/hives/).
# desktop-file-validate (desktop-file-utils) checks the traveller's app's shipped desktop entry
# (share/carryon.desktop, test/e2e/app.test.ts).
# A missing tool is a test failure, never a skip.
set -euo pipefail
pkgs=(build-essential python3 e2fsprogs qemu-utils libnbd-bin nbdkit zstd rsync rdiff casync diffutils chromium openssl bsdutils time fuse3 gocryptfs postgresql ceph-mon ceph-osd radosgw curl haproxy qemu-system-x86 busybox-static cpio libfuse3-dev pkg-config libhivex-bin libwin-hivex-perl xz-utils desktop-file-utils)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
for t in cc make python3 mke2fs debugfs qemu-io qemu-img qemu-nbd nbdcopy nbdinfo nbdkit nbdfuse fusermount3 gocryptfs chromium zstd rsync rdiff casync cmp openssl script psql ceph-mon ceph-osd radosgw radosgw-admin monmaptool curl haproxy qemu-system-x86_64 cpio pkg-config hivexregedit hivexsh xz qemu-storage-daemon desktop-file-validate; do
  command -v "$t" >/dev/null || { echo "install-test-deps: $t is still missing" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "install-test-deps: initdb (postgresql) is still missing" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "install-test-deps: /usr/bin/time (GNU time) is still missing" >&2; exit 1; }
pkg-config --exists fuse3 || { echo "install-test-deps: libfuse3 headers (libfuse3-dev) are still missing" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "install-test-deps: /dev/fuse is missing (modprobe fuse; in a container: --device /dev/fuse)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "install-test-deps: /bin/busybox (busybox-static) is still missing" >&2; exit 1; }
[ -x /usr/lib/qemu/virtiofsd ] || { echo "install-test-deps: /usr/lib/qemu/virtiofsd (qemu-system-common) is missing" >&2; exit 1; }
sh "$(dirname "$0")/fetch-test-kernel.sh" || { echo "install-test-deps: no test kernel (scripts/fetch-test-kernel.sh failed)" >&2; exit 1; }
echo "install-test-deps: all peers present"
