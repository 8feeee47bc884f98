#!/bin/sh
# carryon-logoff.sh USER: at logoff inside a Linux guest, hand the profile back to the laptop. Run as root
# after the session ends (display manager PostSession, pam_exec close_session, a systemd unit's ExecStop).
#   mount mode: the edits are on the laptop already; flush them, then unmount the home and the share.
#   sync mode:  copy the home back into the share (only files whose size or mtime changed; what the user
#               deleted is deleted there too), flush, unmount the share.
# Then stop the VM and `carryon checkin` on the laptop carries exactly these edits. See carryon-logon.sh.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/carryon-common.sh"
user=${1:-${PAM_USER:-}}
[ -n "$user" ] || carryon_die "usage: carryon-logoff.sh USER"
home=$(carryon_home "$user")
case "$CARRYON_MODE" in
  mount)
    sync
    if carryon_mounted "$home"; then umount "$home" || carryon_die "cannot unmount $home (a process still uses it: fuser -m $home), nothing lost: every edit is on the laptop already"; fi
    ;;
  sync)
    marker="$CARRYON_STATE/$user.session"
    [ -e "$marker" ] || carryon_die "no session of $user to log off (carryon-logon.sh was not run in sync mode)"
    carryon_mount_share
    carryon_mirror "$home" "$CARRYON_SHARE"
    sync
    rm -f "$marker"
    ;;
  *) carryon_die "CARRYON_MODE must be mount or sync, not $CARRYON_MODE" ;;
esac
if carryon_mounted "$CARRYON_SHARE"; then umount "$CARRYON_SHARE" || carryon_say "$CARRYON_SHARE stays mounted (in use); the profile is flushed"; fi
carryon_say "the profile of $user is on the laptop; shut the VM down, then carryon checkin"
