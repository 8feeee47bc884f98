#!/bin/sh
# carryon-logon.sh USER: at logon inside a Linux guest, put the carryon persona's profile (shared by
# `carryon serve` with the mount tag carryon-profile) in front of USER as their home folder. Run as root
# before the session starts: a display manager's PreSession script, pam_exec, or a systemd unit.
#   CARRYON_MODE=mount (default): mount the share and bind-mount it over the home. Every write goes to the
#     laptop's profile folder at once (nothing to lose if the VM dies), at the share's speed. The files
#     keep the laptop user's uid: give USER the same uid in the guest (the script refuses otherwise).
#   CARRYON_MODE=sync: copy the profile into the home (a local disk: full speed, any uid), and copy it back
#     with carryon-logoff.sh. Edits made after the last logoff are not on the laptop yet; a logon after a
#     session that never logged off refuses to overwrite them.
# Settings and the mirror: carryon-common.sh. POSIX sh; runs under busybox.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/carryon-common.sh"
user=${1:-${PAM_USER:-}}
[ -n "$user" ] || carryon_die "usage: carryon-logon.sh USER"
home=$(carryon_home "$user")
carryon_mount_share
case "$CARRYON_MODE" in
  mount)
    if carryon_mounted "$home"; then carryon_say "$home is mounted already"; exit 0; fi
    uid=$(carryon_uid "$user")
    owner=$(stat -c %u "$CARRYON_SHARE")
    if [ -n "$uid" ] && [ "$uid" != "$owner" ]; then
      carryon_die "the profile belongs to uid $owner on the laptop but $user has uid ${uid}: give $user uid $owner in this guest (usermod -u $owner $user), or log on with CARRYON_MODE=sync"
    fi
    mkdir -p "$home"
    mount -o bind "$CARRYON_SHARE" "$home"
    carryon_say "$home is the carryon profile (shared from the laptop)"
    ;;
  sync)
    mkdir -p "$CARRYON_STATE"
    marker="$CARRYON_STATE/$user.session"
    [ ! -e "$marker" ] || carryon_die "the last session of $user did not log off, so its edits in $home are not in the profile yet: run carryon-logoff.sh $user (it copies them back), then log on again"
    mkdir -p "$home"
    carryon_mirror "$CARRYON_SHARE" "$home"
    uid=$(carryon_uid "$user"); gid=$(carryon_gid "$user")
    [ -z "$uid" ] || chown -R "$uid:$gid" "$home"
    date > "$marker"
    carryon_say "$home holds a copy of the carryon profile; carryon-logoff.sh $user copies it back"
    ;;
  *) carryon_die "CARRYON_MODE must be mount or sync, not $CARRYON_MODE" ;;
esac
