#!/usr/bin/env bash
# A private PostgreSQL cluster for tests and development, from Debian's postgresql-15 binaries (apt
# package `postgresql`; scripts/install-test-deps.sh installs it). No systemd, no pg_ctlcluster: initdb
# and pg_ctl on a folder of our own, listening on 127.0.0.1 only, its socket inside that folder.
#
#   scripts/pg.sh start DIR [PORT]   create the cluster in DIR if needed and start it (PORT: 55432);
#                                    prints postgres://carryon@127.0.0.1:PORT/carryon. Idempotent.
#   scripts/pg.sh stop DIR           stop it (fast shutdown); nothing if it is not running.
#   scripts/pg.sh url DIR            print its URL.
#
# DIR holds data/ (the cluster), sock/ (the Unix socket), port and log. Auth is trust for the role
# `carryon` (owner of database `carryon`) from 127.0.0.1 only: a throwaway cluster, never a deployment.
# fsync is off for the same reason (tests restart nothing after a power cut). PostgreSQL refuses to run
# as root, so as root the server runs as the `postgres` user (runuser), which then owns DIR.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

BIN=""
for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { BIN="$d"; break; }
done
[ -n "$BIN" ] || die "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: pg.sh start DIR [PORT] | stop DIR | url DIR"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
data="$dir/data"; sock="$dir/sock"

# As root: run the server tools as postgres; otherwise as ourselves.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql creates it)"
  as() { (cd / && runuser -u postgres -- "$@"); }
  owner=postgres
else
  as() { "$@"; }
  owner="$(id -un)"
fi

url() {
  [ -f "$dir/port" ] || die "no cluster in $dir (run: pg.sh start $dir)"
  echo "postgres://carryon@127.0.0.1:$(cat "$dir/port")/carryon"
}

running() { [ -f "$data/PG_VERSION" ] && as "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; }

psql_() { as psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$(cat "$dir/port")" -U postgres -d postgres "$@"; }

case "$cmd" in
  start)
    port="${3:-55432}"
    if running; then
      [ "$(cat "$dir/port")" = "$port" ] || [ -z "${3:-}" ] || die "$dir already runs on port $(cat "$dir/port"), not $port"
      url; exit 0
    fi
    if [ "$(id -u)" -eq 0 ]; then chown "$owner" "$dir"; fi
    as test -w "$dir" || die "$owner cannot write $dir (its parent folders must be searchable by $owner)"
    if [ ! -f "$data/PG_VERSION" ]; then
      as "$BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
      cat >"$data/pg_hba.conf" <<'EOF'
# pg.sh: a throwaway cluster. Local socket for the superuser, 127.0.0.1 for the carryon role.
local all postgres trust
host  all all 127.0.0.1/32 trust
EOF
      cat >>"$data/postgresql.conf" <<'EOF'
# pg.sh
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    as mkdir -p "$sock"
    echo "$port" | as tee "$dir/port" >/dev/null
    as "$BIN/pg_ctl" -D "$data" -l "$dir/log" -w -t 60 -o "-p $port -k $sock" start >/dev/null \
      || { tail -n 20 "$dir/log" >&2; die "the server did not start (port $port in use?)"; }
    psql_ <<'EOF'
SELECT 'CREATE ROLE carryon LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'carryon')\gexec
SELECT 'CREATE DATABASE carryon OWNER carryon' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'carryon')\gexec
EOF
    url
    ;;
  stop)
    if running; then as "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null; fi
    ;;
  url)
    url
    ;;
  *) die "unknown command $cmd (start, stop, url)" ;;
esac
