# Shell helpers the project's service scripts share (sourced by rgw.sh and scale-out.sh).

# Whether a TCP port on 127.0.0.1 accepts connections.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A loopback port nothing listens on (not reserved: a small chance another process takes it first).
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_open "$p" || { echo "$p"; return; }
  done
  die "no free port found on 127.0.0.1"
}

# Whether the process whose pid is in file $1 is alive.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
