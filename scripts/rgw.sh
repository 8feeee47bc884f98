#!/usr/bin/env bash
# A private single-node Ceph with a radosgw (S3) gateway on 127.0.0.1, for S3BlockStore's tests and
# scripts/bench/s3-bench.ts. Installs nothing: it needs ceph-mon, ceph-osd and radosgw from Debian
# (`apt-get install -y ceph-mon ceph-osd radosgw`, or scripts/install-test-deps.sh).
#
#   scripts/rgw.sh start DIR [PORT]   start (or say it already runs); PORT defaults to 7480
#   scripts/rgw.sh env DIR            print CARRYON_S3_URL=... and AWS_* lines (source-able)
#   scripts/rgw.sh stop DIR           kill every daemon of DIR and remove its cluster state (logs stay)
#   scripts/rgw.sh restart DIR        the gateway only: kill radosgw (-9 with KILL=1) and start it again
#                                     on the same port; the mon and the OSD, and so every object, stay
#
# What runs: one mon (msgr2 on a free port), one OSD, radosgw with the beast frontend on
# 127.0.0.1:PORT (tcp_nodelay=1: without it small responses wait ~40 ms for delayed ACKs). No
# ceph-mgr, no systemd, auth none, every pool size 1 with 8 PGs. The OSD keeps its data in memory
# (memstore, up to RGW_MEMSTORE_BYTES, default 4 GiB): tried here with 2 GiB of 16 MiB objects and
# 64 KiB objects (RSS grows by the data held). RGW_OBJECTSTORE=bluestore puts it on a sparse 20 GiB
# file in DIR instead (slower to start, data survives an OSD restart).
# An S3 user with fixed keys (below; test-only, loopback-only) and a bucket `carryon` are created.
# Pitfalls met (docs/storage.md): radosgw forces its own auth settings (cephx, and a `secure` mon
# connection) unless its config section overrides them; bluestore's block file must not be `<osd data>/block` (bluestore makes that a
# symlink to the file, i.e. to itself).
set -euo pipefail

ACCESS_KEY=carryontestaccesskey
SECRET_KEY=carryontestsecretkey0123456789abcdefghij
BUCKET=carryon
RGW_NAME=client.rgw.carryon

die() { echo "rgw.sh: $*" >&2; exit 1; }
usage() { die "usage: rgw.sh start DIR [PORT] | stop DIR | restart DIR | env DIR"; }

need_bins() {
  local missing=()
  for b in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph curl; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: install Ceph with \`apt-get install -y ceph-mon ceph-osd radosgw\` (curl: \`apt-get install -y curl\`), or run scripts/install-test-deps.sh"
  fi
}

# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

cephc() { timeout 30 ceph -c "$DIR/ceph.conf" --connect-timeout 20 "$@"; }

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "$what did not come up within ${secs}s (logs in $DIR/log)"
    sleep 0.3
  done
}

osd_up() { cephc osd stat 2>/dev/null | grep -q '1 up'; }
rgw_answers() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/" | grep -q '^[2-4]'; }

write_env() {
  cat >"$DIR/env" <<EOF
CARRYON_S3_URL=s3+http://127.0.0.1:$PORT/$BUCKET
CARRYON_S3_ENDPOINT=http://127.0.0.1:$PORT
CARRYON_S3_BUCKET=$BUCKET
AWS_ACCESS_KEY_ID=$ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$SECRET_KEY
AWS_REGION=us-east-1
EOF
}

do_stop() {
  local f
  # radosgw first (it talks to the OSD), then the OSD, then the mon.
  for f in rgw osd.0 mon.a; do
    if pid_alive "$DIR/run/$f.pid"; then
      local pid; pid=$(cat "$DIR/run/$f.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$DIR/run" "$DIR/mon" "$DIR/osd" "$DIR/rgw" "$DIR/ceph.conf" "$DIR/monmap" "$DIR/keyring" "$DIR/env" "$DIR/port" "$DIR/block.img"
}

do_start() {
  need_bins
  mkdir -p "$DIR"
  if pid_alive "$DIR/run/rgw.pid" && pid_alive "$DIR/run/osd.0.pid" && pid_alive "$DIR/run/mon.a.pid"; then
    PORT=$(cat "$DIR/port")
    if rgw_answers; then
      echo "rgw.sh: already running on 127.0.0.1:$PORT (DIR $DIR)"
      return
    fi
  fi
  do_stop # leftovers of a half-started or crashed cluster
  if port_open "$PORT"; then die "port $PORT on 127.0.0.1 is already in use"; fi
  local monport fsid osduuid store
  monport=$(free_port)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osduuid=$(cat /proc/sys/kernel/random/uuid)
  store=${RGW_OBJECTSTORE:-memstore}
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/mon" "$DIR/osd/ceph-0" "$DIR/rgw"
  echo "$PORT" >"$DIR/port"
  local auth="auth cluster required = none
auth service required = none
auth client required = none"
  cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$monport]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
$auth
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false

[mon]
mon data = $DIR/mon/\$cluster-\$id

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = $store
memstore device bytes = ${RGW_MEMSTORE_BYTES:-4294967296}
bluestore block path = $DIR/block.img
bluestore block size = 21474836480
bluestore block create = true
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
osd memory target = 939524096

[$RGW_NAME]
rgw frontends = beast endpoint=127.0.0.1:$PORT tcp_nodelay=1
rgw data = $DIR/rgw
pid file = $DIR/run/rgw.pid
log file = $DIR/log/rgw.log
keyring = $DIR/keyring
$auth
ms mon client mode = crc
rgw enable usage log = false
EOF
  : >"$DIR/keyring"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$monport]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" >"$DIR/log/mkfs.log" 2>&1 || die "ceph-mon --mkfs failed: $(tail -3 "$DIR/log/mkfs.log")"
  ceph-mon -c "$DIR/ceph.conf" -i a 2>>"$DIR/log/daemons.log"
  wait_for 30 "ceph-mon" cephc mon stat
  local id; id=$(cephc osd new "$osduuid")
  [ "$id" = 0 ] || die "expected osd id 0, got '$id'"
  ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osduuid" >>"$DIR/log/mkfs.log" 2>&1 || die "ceph-osd --mkfs failed: $(tail -3 "$DIR/log/mkfs.log")"
  ceph-osd -c "$DIR/ceph.conf" -i 0 2>>"$DIR/log/daemons.log"
  wait_for 60 "ceph-osd" osd_up
  # radosgw stays in the foreground until it has reached the mon (up to 300 s when it cannot).
  timeout 60 radosgw -c "$DIR/ceph.conf" -n "$RGW_NAME" || die "radosgw did not start: $(tail -3 "$DIR/log/rgw.log")"
  wait_for 90 "radosgw" rgw_answers
  radosgw-admin -c "$DIR/ceph.conf" user create --uid=carryon --display-name=carryon \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >>"$DIR/log/mkfs.log" 2>&1 || die "radosgw-admin user create failed (see $DIR/log/mkfs.log)"
  local code
  # curl 7.88 signs the payload hash but does not send it: RGW needs x-amz-content-sha256 (of "").
  code=$(curl -s -o "$DIR/log/bucket.xml" -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    --user "$ACCESS_KEY:$SECRET_KEY" "http://127.0.0.1:$PORT/$BUCKET")
  [ "$code" = 200 ] || die "creating bucket $BUCKET answered HTTP $code: $(cat "$DIR/log/bucket.xml")"
  write_env
  echo "rgw.sh: radosgw on 127.0.0.1:$PORT ($store), bucket $BUCKET (DIR $DIR)"
}

# radosgw alone, as a crash or an upgrade of the gateway would: stop and start would wipe the
# cluster (memstore keeps objects only while the OSD runs).
do_restart() {
  need_bins
  pid_alive "$DIR/run/osd.0.pid" && pid_alive "$DIR/run/mon.a.pid" || die "no running cluster in $DIR (run: rgw.sh start $DIR)"
  PORT=$(cat "$DIR/port")
  if pid_alive "$DIR/run/rgw.pid"; then
    local pid; pid=$(cat "$DIR/run/rgw.pid")
    local sig=TERM; [ "${KILL:-}" = 1 ] && sig=KILL
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/run/rgw.pid"
  timeout 60 radosgw -c "$DIR/ceph.conf" -n "$RGW_NAME" || die "radosgw did not start: $(tail -3 "$DIR/log/rgw.log")"
  wait_for 90 "radosgw" rgw_answers
  echo "rgw.sh: radosgw restarted on 127.0.0.1:$PORT (DIR $DIR)"
}

cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || usage
DIR=$(realpath -m "$DIR")
case "$cmd" in
  start)
    PORT=${3:-7480}
    [[ "$PORT" =~ ^[0-9]+$ ]] || usage
    do_start ;;
  stop)
    do_stop
    echo "rgw.sh: stopped (DIR $DIR)" ;;
  restart)
    do_restart ;;
  env)
    [ -f "$DIR/env" ] || die "no cluster started in $DIR"
    cat "$DIR/env" ;;
  *) usage ;;
esac
