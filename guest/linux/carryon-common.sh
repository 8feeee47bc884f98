# Shared by carryon-logon.sh and carryon-logoff.sh (sourced, POSIX sh, busybox-compatible).
# Owns: finding the user's home, mounting the profile share, and the one-way mirror the sync mode uses.
# Settings (environment):
#   CARRYON_TAG    the share's mount tag (default carryon-profile, what `carryon serve` prints)
#   CARRYON_MODE   mount (default): the share IS the home, bind-mounted over it, every write lands on
#                  the laptop at once; sync: the home is a local copy, filled at logon, copied back at logoff
#   CARRYON_SHARE  where the share itself is mounted (default /run/carryon/profile)
#   CARRYON_STATE  where sync mode keeps its session markers (default /var/lib/carryon)

CARRYON_TAG=${CARRYON_TAG:-carryon-profile}
CARRYON_MODE=${CARRYON_MODE:-mount}
CARRYON_SHARE=${CARRYON_SHARE:-/run/carryon/profile}
CARRYON_STATE=${CARRYON_STATE:-/var/lib/carryon}

carryon_die() { echo "carryon: $*" >&2; exit 1; }
carryon_say() { echo "carryon: $*" >&2; }

# carryon_home USER: the home folder /etc/passwd gives the user (CARRYON_HOME_DIR overrides).
carryon_home() {
  if [ -n "${CARRYON_HOME_DIR:-}" ]; then echo "$CARRYON_HOME_DIR"; return; fi
  h=$(awk -F: -v u="$1" '$1 == u { print $6; exit }' /etc/passwd)
  [ -n "$h" ] || carryon_die "no user $1 in /etc/passwd (or set CARRYON_HOME_DIR)"
  echo "$h"
}

carryon_uid() { awk -F: -v u="$1" '$1 == u { print $3; exit }' /etc/passwd; }
carryon_gid() { awk -F: -v u="$1" '$1 == u { print $4; exit }' /etc/passwd; }

# Whether $1 is a mount point (busybox and util-linux both have mountpoint; /proc/mounts otherwise).
carryon_mounted() {
  if command -v mountpoint >/dev/null 2>&1; then mountpoint -q "$1"; return; fi
  awk -v d="$1" '$2 == d { f = 1 } END { exit !f }' /proc/mounts
}

# Mount the share: 9p first (what carryon serve offers: QEMU's -virtfs), then virtio-fs (a hypervisor
# that runs virtiofsd on the same folder with the same tag).
carryon_mount_share() {
  carryon_mounted "$CARRYON_SHARE" && return 0
  mkdir -p "$CARRYON_SHARE"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,access=any "$CARRYON_TAG" "$CARRYON_SHARE" 2>/dev/null ||
    mount -t virtiofs "$CARRYON_TAG" "$CARRYON_SHARE" 2>/dev/null ||
    carryon_die "cannot mount the profile share (tag $CARRYON_TAG): is the VM started with the -virtfs line carryon serve printed, and are the 9p modules (9p, 9pnet_virtio) in this kernel?"
}

# carryon_mirror SRC DST: make DST hold exactly what SRC holds (files, folders, symlinks, modes, mtimes),
# copying only files whose size or mtime differ (rsync's quick check) and removing what SRC lacks.
# Names with a newline are not supported (a persona refuses control characters in names anyway).
carryon_mirror() {
  src=$1; dst=$2
  # What SRC lacks goes first, deepest first, so a file that became a folder (or back) is replaced.
  (cd "$dst" && find . -depth ! -name .) | while IFS= read -r p; do
    if [ ! -e "$src/$p" ] && [ ! -L "$src/$p" ]; then rm -rf "${dst:?}/$p"; fi
  done
  (cd "$src" && find . ! -name .) | while IFS= read -r p; do
    s="$src/$p"; d="$dst/$p"
    if [ -L "$s" ]; then
      if [ ! -L "$d" ] || [ "$(readlink "$s")" != "$(readlink "$d")" ]; then rm -rf "$d"; cp -P -p "$s" "$d"; fi
    elif [ -d "$s" ]; then
      if [ -L "$d" ] || [ ! -d "$d" ]; then rm -rf "$d"; mkdir "$d"; fi
      chmod "$(stat -c %a "$s")" "$d"
    elif [ -f "$s" ]; then
      if [ -L "$d" ] || [ ! -f "$d" ] || [ "$(stat -c '%s %Y' "$s")" != "$(stat -c '%s %Y' "$d")" ]; then rm -rf "$d"; cp -p "$s" "$d"; fi
    else
      carryon_say "left out $p: not a file, folder or symlink (a persona cannot hold it)"
    fi
  done
  # Folder mtimes last: copying into a folder moved its mtime.
  (cd "$src" && find . -type d) | while IFS= read -r p; do touch -r "$src/$p" "$dst/$p"; done
}
