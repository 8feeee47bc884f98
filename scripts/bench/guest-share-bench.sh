#!/bin/sh
# Measures the two ways `carryon serve` could put the profile folder in front of a Linux guest: 9p
# (QEMU's -virtfs, no daemon) and virtio-fs (Debian's /usr/lib/qemu/virtiofsd on a vhost-user socket).
# It boots Debian's kernel (scripts/fetch-test-kernel.sh) with a busybox initramfs under TCG, mounts the
# host folder each way and times, inside the guest (/proc/uptime, 10 ms), writing N small files, listing
# them, reading them back cold, and writing and reading one large file. Numbers go to docs/decisions.md.
#   sh scripts/bench/guest-share-bench.sh [N_SMALL=500] [LARGE_MIB=64] [RUNS=1]
#   VIRTIOFS_CACHE=auto|none|always (virtiofsd's -o cache=, default auto)
# Needs qemu-system-x86, busybox-static, cpio, and root for virtiofsd (its namespace sandbox).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-500}; large=${2:-64}; runs=${3:-1}
kdir=${CARRYON_TEST_KERNEL_DIR:-$repo/.cache/test-kernel}
[ -f "$kdir/current" ] || sh "$repo/scripts/fetch-test-kernel.sh"
ver=$(cat "$kdir/current"); k="$kdir/$ver"
work=$(mktemp -d /tmp/carryon-guest-bench-XXXXXX)
trap 'kill $(cat "$work/vfs.pid" 2>/dev/null) 2>/dev/null || true; [ "${CARRYON_KEEP_TMP:-}" = 1 ] || rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/modules" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/mnt"
cp /bin/busybox "$work/root/bin/busybox"
cp "$k"/modules/*.ko "$k/modules/order" "$work/root/modules/"
head -c 4096 /usr/share/common-licenses/GPL-3 > "$work/root/small"
cat > "$work/root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in \$(cat /modules/order); do insmod /modules/\$m.ko; done
share=\$(sed -n 's/.*share=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
mnt() { if [ "\$share" = 9p ]; then mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,access=any carryon-profile /mnt; else mount -t virtiofs carryon-profile /mnt; fi; }
t() { cut -d' ' -f1 /proc/uptime; }
say() { echo "RESULT \$share \$1 \$(echo "\$3 \$2" | awk '{printf "%.2f", \$1-\$2}')"; }
mnt
a=\$(t); mkdir /mnt/small; i=0; while [ \$i -lt $n ]; do cp /small /mnt/small/f\$i.txt; i=\$((i+1)); done; sync; b=\$(t); say small-write \$a \$b
umount /mnt; echo 3 > /proc/sys/vm/drop_caches; mnt
a=\$(t); ls -l /mnt/small | wc -l >/dev/null; b=\$(t); say small-list \$a \$b
a=\$(t); cat /mnt/small/* | wc -c >/dev/null; b=\$(t); say small-read \$a \$b
a=\$(t); dd if=/dev/zero of=/mnt/large bs=1M count=$large conv=fsync 2>/dev/null; b=\$(t); say large-write \$a \$b
umount /mnt; echo 3 > /proc/sys/vm/drop_caches; mnt
a=\$(t); dd if=/mnt/large of=/dev/null bs=1M 2>/dev/null; b=\$(t); say large-read \$a \$b
a=\$(t); rm -r /mnt/small; sync; b=\$(t); say small-delete \$a \$b
umount /mnt
poweroff -f
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc -R 0:0 --quiet) > "$work/initrd"
boot() { # $1 = share mode; extra qemu args follow
  mode=$1; shift
  timeout 600 qemu-system-x86_64 -accel tcg -nodefaults -nographic -serial stdio -no-reboot -m 512 \
    -kernel "$k/vmlinuz" -initrd "$work/initrd" -append "console=ttyS0 quiet panic=-1 share=$mode" "$@" \
    > "$work/console-$mode.log" 2>&1
  grep -o 'RESULT.*' "$work/console-$mode.log" | tr -d '\r' || { cat "$work/console-$mode.log" >&2; exit 1; }
}
r=0
while [ $r -lt "$runs" ]; do
  r=$((r+1))
  rm -rf "$work/share9p" && mkdir "$work/share9p"
  boot 9p -virtfs "local,path=$work/share9p,mount_tag=carryon-profile,security_model=none,id=profile"
  rm -rf "$work/sharevfs" && mkdir "$work/sharevfs"
  /usr/lib/qemu/virtiofsd --socket-path="$work/vfs.sock" -o source="$work/sharevfs" -o cache="${VIRTIOFS_CACHE:-auto}" > "$work/virtiofsd.log" 2>&1 &
  echo $! > "$work/vfs.pid"
  i=0; while [ ! -S "$work/vfs.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  boot virtiofs -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=vfs,path="$work/vfs.sock" -device vhost-user-fs-pci,chardev=vfs,tag=carryon-profile
  wait "$(cat "$work/vfs.pid")" 2>/dev/null || true
done
