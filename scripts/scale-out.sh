#!/usr/bin/env bash
# The local scale-out setup in one command: a private PostgreSQL (scripts/pg.sh) for the metadata, a
# private Ceph RGW (scripts/rgw.sh) for the blocks, two carryon-server instances sharing both, and
# HAProxy in front of them, round-robin. Everything listens on 127.0.0.1 only. For development, tests
# (test/e2e/scale-out.test.ts) and the soak (scripts/soak.ts); a deployment runs the same pieces on
# several machines (docs/deployment.md, "Several instances").
#
#   scripts/scale-out.sh start DIR [PORT]   start what is not running yet (idempotent); HAProxy on
#                                           127.0.0.1:PORT (default 7480). Prints the URL laptops use.
#   scripts/scale-out.sh status DIR         each component: running or not, its address; HAProxy's view
#                                           of the two instances (up/down, requests served)
#   scripts/scale-out.sh stop DIR           stop everything and delete its state (the Ceph cluster keeps
#                                           objects in memory only, so the metadata goes too); logs stay
#
# DIR holds: pg/ (the cluster), rgw/ (Ceph), instance1/ and instance2/ (each instance's own data
# folder: staging tmp/ and escrow/, the same key pair in both), haproxy.cfg, run/ (pid files),
# logs/ (instanceN.log: the server's JSON log; haproxy.log: one line per request), ports.env and
# scale-out.json (URLs, data folders, pids: what scripts and tests read).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "scale-out.sh: $*" >&2; exit 1; }
usage() { die "usage: scale-out.sh start DIR [PORT] | status DIR | stop DIR"; }

cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || usage
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
RUN="$DIR/run"; LOGS="$DIR/logs"

# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { printf "%-34s" "$1"; }
done_() { echo "$1"; }

# What each component needs from Debian, named in the apt-get line a missing one fails with.
need_packages() {
  local missing=() pkgs=()
  command -v node >/dev/null 2>&1 || { missing+=(node); pkgs+=(nodejs); }
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { missing+=(haproxy); pkgs+=(haproxy); }
  command -v curl >/dev/null 2>&1 || { missing+=(curl); pkgs+=(curl); }
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { missing+=(initdb); pkgs+=(postgresql); }
  local b
  for b in ceph-mon ceph-osd radosgw; do command -v "$b" >/dev/null 2>&1 || { missing+=("$b"); pkgs+=("$b"); }; done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: apt-get install -y ${pkgs[*]}"
  fi
}
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

load_ports() { [ -f "$DIR/ports.env" ] && . "$DIR/ports.env"; return 0; }

# spawn PIDFILE CMD...: CMD in the background in a session of its own (a Ctrl-C in the caller's terminal
# does not reach it), its pid in PIDFILE. No subshell stays behind holding the caller's stdout (a
# caller reading it to the end would wait for as long as CMD runs); the caller redirects CMD's output.
spawn() {
  local pidf=$1; shift
  rm -f "$pidf"
  # Written whole (rename), so a reader never sees it empty.
  setsid bash -c 'echo $$ >"$1.new" && mv "$1.new" "$1"; shift; exec "$@"' _ "$pidf" "$@" </dev/null &
}

# One instance: `node bin/carryon-server.js start`, its pid recorded; returns once it listens.
start_instance() { # start_instance N PORT
  local n=$1 port=$2 data="$DIR/instance$1" pidf="$RUN/instance$1.pid" out="$LOGS/instance$1.out" t; t=$(now)
  step "instance$n 127.0.0.1:$port"
  if pid_alive "$pidf" && port_open "$port"; then done_ "already running (pid $(cat "$pidf"), http://127.0.0.1:$port)"; return; fi
  : >"$out"
  spawn "$pidf" node "$ROOT/bin/carryon-server.js" start --data "$data" --listen "127.0.0.1:$port" --trust-proxy 127.0.0.1 \
    >"$out" 2>>"$LOGS/instance$n.log"
  local end=$(( $(date +%s) + 60 ))
  until grep -q 'listening on' "$out" 2>/dev/null; do
    if [ -f "$pidf" ] && ! kill -0 "$(cat "$pidf")" 2>/dev/null; then
      die "instance $n exited before listening: $(tail -n 5 "$LOGS/instance$n.log")"
    fi
    [ "$(date +%s)" -lt "$end" ] || die "instance $n did not listen within 60 s (log: $LOGS/instance$n.log)"
    sleep 0.1
  done
  done_ "ok, pid $(cat "$pidf") ($(took "$t"))"
}

write_haproxy_cfg() {
  cat >"$DIR/haproxy.cfg" <<EOF
# Written by scripts/scale-out.sh; docs/deployment.md explains each line.
global
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    option redispatch            # a connection refused by a dead instance is retried on the other
    retries 3
    timeout connect 5s
    timeout http-request 30s     # the request headers only
    timeout client 10m           # inactivity on the laptop side, between two reads or writes
    timeout server 10m           # inactivity on the carryon-server side (a commit syncs the store first)
    timeout tunnel 1h            # a connection that was upgraded or switched to tunnel mode
    timeout http-keep-alive 60s
    timeout check 5s

frontend carryon
    bind 127.0.0.1:$PORT
    # The edge proxy: drop what the laptop wrote; option forwardfor then adds the address HAProxy saw.
    http-request del-header X-Forwarded-For
    option forwardfor
    default_backend carryon

backend carryon
    balance roundrobin           # per request: one check-in's requests go to both instances
    # /console is a static page: no database, no log line; it says the process answers.
    option httpchk GET /console
    http-check expect status 200
    # Bodies stream both ways (no option http-buffer-request) and have no size limit here.
    server instance1 127.0.0.1:$I1_PORT check inter 2s fall 2 rise 2
    server instance2 127.0.0.1:$I2_PORT check inter 2s fall 2 rise 2

listen stats
    bind 127.0.0.1:$STATS_PORT
    stats enable
    stats uri /
    stats refresh 5s
EOF
}

write_state() {
  cat >"$DIR/scale-out.json" <<EOF
{
  "url": "http://127.0.0.1:$PORT",
  "instances": [
    { "name": "instance1", "url": "http://127.0.0.1:$I1_PORT", "data": "$DIR/instance1", "pidFile": "$RUN/instance1.pid", "log": "$LOGS/instance1.log" },
    { "name": "instance2", "url": "http://127.0.0.1:$I2_PORT", "data": "$DIR/instance2", "pidFile": "$RUN/instance2.pid", "log": "$LOGS/instance2.log" }
  ],
  "meta": "$META",
  "store": "$STORE",
  "pgDir": "$DIR/pg",
  "rgwDir": "$DIR/rgw",
  "haproxy": { "pidFile": "$RUN/haproxy.pid", "log": "$LOGS/haproxy.log", "stats": "http://127.0.0.1:$STATS_PORT/;csv" }
}
EOF
}

do_start() {
  need_packages
  mkdir -p "$RUN" "$LOGS"
  # PostgreSQL runs as the postgres user, which must reach DIR/pg: DIR becomes searchable (not readable).
  chmod o+x "$DIR"
  load_ports
  local want=${1:-${PORT:-7480}}
  if [ -n "${PORT:-}" ] && [ "$want" != "$PORT" ] && pid_alive "$RUN/haproxy.pid"; then die "$DIR already runs HAProxy on port $PORT, not $want (stop it first)"; fi
  PORT=$want
  if ! pid_alive "$RUN/haproxy.pid" && port_open "$PORT"; then die "port $PORT on 127.0.0.1 is already in use: pass another PORT"; fi
  PG_PORT=${PG_PORT:-$(free_port)}; RGW_PORT=${RGW_PORT:-$(free_port)}
  I1_PORT=${I1_PORT:-$(free_port)}; I2_PORT=${I2_PORT:-$(free_port)}; STATS_PORT=${STATS_PORT:-$(free_port)}
  printf 'PORT=%s\nPG_PORT=%s\nRGW_PORT=%s\nI1_PORT=%s\nI2_PORT=%s\nSTATS_PORT=%s\n' "$PORT" "$PG_PORT" "$RGW_PORT" "$I1_PORT" "$I2_PORT" "$STATS_PORT" >"$DIR/ports.env"
  local t0 t; t0=$(now)

  if [ ! -f "$ROOT/dist/server/main.js" ] || [ ! -f "$ROOT/dist/client/main.js" ]; then
    step "building (npx tsc -b)"; t=$(now)
    (cd "$ROOT" && npx tsc -b) >&2 || die "the build failed"
    done_ "ok ($(took "$t"))"
  fi

  step "postgresql 127.0.0.1:$PG_PORT"; t=$(now)
  META=$(bash "$ROOT/scripts/pg.sh" start "$DIR/pg" "$PG_PORT")
  done_ "ok ($(took "$t"))"

  step "ceph rgw 127.0.0.1:$RGW_PORT"; t=$(now)
  local rgw_was_running=0
  if pid_alive "$DIR/rgw/run/rgw.pid" && pid_alive "$DIR/rgw/run/osd.0.pid"; then rgw_was_running=1; fi
  if [ $rgw_was_running = 0 ] && [ -f "$DIR/instance1/backends.json" ]; then
    done_ "GONE"
    die "the Ceph cluster of $DIR is not running, and its objects (kept in memory) went with it while the metadata in PostgreSQL remains: run scale-out.sh stop $DIR, then start again"
  fi
  bash "$ROOT/scripts/rgw.sh" start "$DIR/rgw" "$RGW_PORT" >"$LOGS/rgw-start.log" 2>&1 || die "rgw.sh start failed: $(tail -n 3 "$LOGS/rgw-start.log")"
  local key secret
  key=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$DIR/rgw/env"); secret=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$DIR/rgw/env")
  local s3; s3=$(sed -n 's/^CARRYON_S3_URL=//p' "$DIR/rgw/env")
  STORE="s3+http://$key:$secret@${s3#s3+http://}/scale-out"
  if [ $rgw_was_running = 1 ]; then done_ "already running"; else done_ "ok ($(took "$t"))"; fi

  step "init instance1 (schema, escrow)"; t=$(now)
  if [ -f "$DIR/instance1/backends.json" ]; then done_ "already initialised"
  else
    node "$ROOT/bin/carryon-server.js" init --data "$DIR/instance1" --meta "$META" --store "$STORE" >"$LOGS/init1.log" 2>&1 || die "init of instance1 failed: $(tail -n 5 "$LOGS/init1.log")"
    done_ "ok ($(took "$t"))"
  fi
  step "init instance2 (escrow copied)"; t=$(now)
  if [ -f "$DIR/instance2/backends.json" ]; then done_ "already initialised"
  else
    # The escrow and release key pairs must be the same on every instance: laptops seal to the one and
    # verify client updates with the other through either.
    mkdir -p "$DIR/instance2"; chmod 700 "$DIR/instance2"
    cp -a "$DIR/instance1/escrow" "$DIR/instance2/"
    cp -a "$DIR/instance1/release" "$DIR/instance2/"
    node "$ROOT/bin/carryon-server.js" init --data "$DIR/instance2" --meta "$META" --store "$STORE" >"$LOGS/init2.log" 2>&1 || die "init of instance2 failed: $(tail -n 5 "$LOGS/init2.log")"
    cmp -s "$DIR/instance1/escrow/escrow.pub" "$DIR/instance2/escrow/escrow.pub" || die "instance2's escrow key differs from instance1's"
    cmp -s "$DIR/instance1/release/release.pub" "$DIR/instance2/release/release.pub" || die "instance2's release key differs from instance1's"
    done_ "ok ($(took "$t"))"
  fi

  start_instance 1 "$I1_PORT"
  start_instance 2 "$I2_PORT"

  step "haproxy 127.0.0.1:$PORT"; t=$(now)
  write_haproxy_cfg
  "$HAPROXY" -c -q -f "$DIR/haproxy.cfg" || die "haproxy refused $DIR/haproxy.cfg"
  if pid_alive "$RUN/haproxy.pid"; then done_ "already running (pid $(cat "$RUN/haproxy.pid"))"
  else
    spawn "$RUN/haproxy.pid" "$HAPROXY" -db -f "$DIR/haproxy.cfg" >>"$LOGS/haproxy.log" 2>&1
    local end=$(( $(date +%s) + 20 )) tries=1
    until curl -sf -o /dev/null "http://127.0.0.1:$STATS_PORT/;csv" && curl -s "http://127.0.0.1:$STATS_PORT/;csv" | grep -q '^carryon,instance2,.*,UP,'; do
      if ! pid_alive "$RUN/haproxy.pid"; then
        sleep 0.3 # its last words reach the log
        # The stats port was free when picked, seconds ago; something else may have taken it since: pick
        # another, twice. The laptops' port is the caller's, so a clash there is reported as it is.
        if [ "$tries" -lt 3 ] && ! port_open "$PORT"; then
          tries=$((tries + 1)); STATS_PORT=$(free_port)
          printf 'PORT=%s\nPG_PORT=%s\nRGW_PORT=%s\nI1_PORT=%s\nI2_PORT=%s\nSTATS_PORT=%s\n' "$PORT" "$PG_PORT" "$RGW_PORT" "$I1_PORT" "$I2_PORT" "$STATS_PORT" >"$DIR/ports.env"
          write_haproxy_cfg
          spawn "$RUN/haproxy.pid" "$HAPROXY" -db -f "$DIR/haproxy.cfg" >>"$LOGS/haproxy.log" 2>&1
          continue
        fi
        die "haproxy exited: $(tail -n 5 "$LOGS/haproxy.log")"
      fi
      [ "$(date +%s)" -lt "$end" ] || die "haproxy did not see both instances up within 20 s (stats: http://127.0.0.1:$STATS_PORT/)"
      sleep 0.2
    done
    done_ "ok ($(took "$t"))"
  fi
  write_state
  cat <<EOF
scale-out setup running in $DIR ($(took "$t0"))
  laptops use:   http://127.0.0.1:$PORT        (carryon login http://127.0.0.1:$PORT)
  instances:     http://127.0.0.1:$I1_PORT (instance1), http://127.0.0.1:$I2_PORT (instance2)
  metadata:      $META
  blocks:        s3+http://...@${STORE#*@}
  haproxy stats: http://127.0.0.1:$STATS_PORT/
  add a user:    node $ROOT/bin/carryon-server.js user add NAME --data $DIR/instance1
  (any admin command works on either data folder: carryon-server admin audit --data $DIR/instance2)
  stop:          scripts/scale-out.sh stop $DIR
EOF
}

stop_pid() { # stop_pid PIDFILE NAME
  if pid_alive "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $2 (pid $pid)"
  fi
  rm -f "$1"
}

do_stop() {
  stop_pid "$RUN/haproxy.pid" haproxy
  stop_pid "$RUN/instance1.pid" instance1
  stop_pid "$RUN/instance2.pid" instance2
  if [ -d "$DIR/rgw" ]; then bash "$ROOT/scripts/rgw.sh" stop "$DIR/rgw"; fi
  if [ -d "$DIR/pg" ]; then bash "$ROOT/scripts/pg.sh" stop "$DIR/pg" && echo "stopped postgresql"; fi
  # Ceph's objects lived in memory; metadata and data folders without them would name missing blocks.
  rm -rf "$DIR/pg" "$DIR/rgw" "$DIR/instance1" "$DIR/instance2" "$RUN" "$DIR/ports.env" "$DIR/scale-out.json" "$DIR/haproxy.cfg"
  echo "scale-out.sh: stopped; logs kept in $LOGS"
}

do_status() {
  load_ports
  [ -n "${PORT:-}" ] || { echo "scale-out.sh: nothing started in $DIR"; exit 3; }
  local ok=0
  show() { # show NAME RUNNING DETAIL
    printf '%-10s %-8s %s\n' "$1" "$([ "$2" = 1 ] && echo running || echo DOWN)" "$3"
    [ "$2" = 1 ] || ok=1
  }
  local r
  r=0; bash "$ROOT/scripts/pg.sh" url "$DIR/pg" >/dev/null 2>&1 && port_open "$PG_PORT" && r=1; show postgres $r "127.0.0.1:$PG_PORT"
  r=0; pid_alive "$DIR/rgw/run/rgw.pid" && port_open "$RGW_PORT" && r=1; show rgw $r "127.0.0.1:$RGW_PORT (mon $(pid_alive "$DIR/rgw/run/mon.a.pid" && echo up || echo DOWN), osd $(pid_alive "$DIR/rgw/run/osd.0.pid" && echo up || echo DOWN))"
  r=0; pid_alive "$RUN/instance1.pid" && port_open "$I1_PORT" && r=1; show instance1 $r "http://127.0.0.1:$I1_PORT (pid $(cat "$RUN/instance1.pid" 2>/dev/null || echo -))"
  r=0; pid_alive "$RUN/instance2.pid" && port_open "$I2_PORT" && r=1; show instance2 $r "http://127.0.0.1:$I2_PORT (pid $(cat "$RUN/instance2.pid" 2>/dev/null || echo -))"
  r=0; pid_alive "$RUN/haproxy.pid" && port_open "$PORT" && r=1; show haproxy $r "http://127.0.0.1:$PORT (stats http://127.0.0.1:$STATS_PORT/)"
  if [ $r = 1 ]; then
    # HAProxy's view: status and requests served, per instance (CSV fields: 2 svname, 18 status, 49 req_tot... by header name).
    curl -s "http://127.0.0.1:$STATS_PORT/;csv" | awk -F, '
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
      $1 == "carryon" && $2 ~ /^instance/ { printf "  haproxy sees %s: %s, %s requests, %s sessions\n", $2, $col["status"], $col["req_tot"] == "" ? $col["stot"] : $col["req_tot"], $col["stot"] }'
  fi
  return $ok
}

case "$cmd" in
  start) do_start "${3:-}" ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
