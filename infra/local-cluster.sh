#!/usr/bin/env bash
# A two-node Ray cluster on one machine (a head and a worker, real `ray start` processes) plus a
# local S3 endpoint (moto's server), to try `reid submit` / `reid jobs` without a cloud.
#
#   infra/local-cluster.sh up            start S3, the head, one worker; print the addresses
#   infra/local-cluster.sh env           the variables to export:  eval "$(infra/local-cluster.sh env)"
#   infra/local-cluster.sh status        the nodes and their resources
#   infra/local-cluster.sh add-worker    one more worker node
#   infra/local-cluster.sh kill-worker   SIGKILL a worker node (NODE_ID, default: the newest), all its processes
#   infra/local-cluster.sh down          stop everything this script started (by pid, nothing else)
#
# Settings (environment): STATE_DIR (default /tmp/reid-local-cluster: pids, logs, Ray's temp dir;
# keep it short, Ray's socket paths must stay under 107 bytes), HEAD_CPUS=1, WORKER_CPUS=1,
# WORKER_RESOURCES='{}' (custom resources of each worker, JSON), DASHBOARD_PORT=8265, GCS_PORT=6379,
# S3=1 (0: no local S3; the nodes then use your AWS variables), S3_PORT (default: a free port),
# S3_BUCKET=reid (a bucket created empty on the local S3),
# AUTH=1 (Ray token authentication with a token made for this cluster; 0: none),
# STOP_GRACE_S=30 (how long `down` lets each node shut down cleanly before SIGKILL),
# PYTHON / RAY (default: the python and ray on PATH, e.g. the project's .venv/bin). Other RAY_*
# variables reach the nodes, e.g. RAY_health_check_period_ms to notice a lost node sooner.
#
# The nodes get the S3 credentials from their environment, as cloud nodes get them from an
# instance role: a submitted job never carries secrets. Both nodes share one temp dir so that the
# Jobs API finds a job's driver log whichever node runs it.
set -euo pipefail

STATE_DIR=${STATE_DIR:-/tmp/reid-local-cluster}
HEAD_CPUS=${HEAD_CPUS:-1}
WORKER_CPUS=${WORKER_CPUS:-1}
WORKER_RESOURCES=${WORKER_RESOURCES:-"{}"}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
GCS_PORT=${GCS_PORT:-6379}
S3=${S3:-1}
S3_BUCKET=${S3_BUCKET:-reid}
AUTH=${AUTH:-1}
STOP_GRACE_S=${STOP_GRACE_S:-30}
PYTHON=${PYTHON:-python}
RAY=${RAY:-ray}
TEMP="$STATE_DIR/ray"
LOGS="$STATE_DIR/logs"

die() { echo "local-cluster: $*" >&2; exit 1; }

free_ports() {  # N free TCP ports on 127.0.0.1
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_free() {
  "$PYTHON" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)) == 0)"
}

wait_http() {  # URL TIMEOUT_S
  "$PYTHON" - "$1" "$2" <<'EOF' || die "no answer from $1 after $2 s (see $LOGS)"
import sys, time, urllib.error, urllib.request
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read()
        sys.exit(0)
    except urllib.error.HTTPError:  # it answers (e.g. 401: Ray's token authentication is on)
        sys.exit(0)
    except Exception:
        time.sleep(0.3)
sys.exit(1)
EOF
}

wait_log() {  # FILE PATTERN TIMEOUT_S PID
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    kill -0 "$4" 2>/dev/null || { tail -n 15 "$1" >&2; die "$(basename "$1" .log) exited; see $1"; }
    ((SECONDS < deadline)) || die "$(basename "$1" .log) not up after $3 s; see $1"
    sleep 0.3
  done
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

descendants() {  # PID and every process below it
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q != "" && q != 0 && q != 1) {
            if (q == root) { print p; break } q = parent[q] } } }'
}

start_s3() {
  [[ "$S3" == 1 ]] || return 0
  local port=${S3_PORT:-$(free_ports 1)}
  setsid "$PYTHON" -m moto.server -H 127.0.0.1 -p "$port" >"$LOGS/s3.log" 2>&1 &
  echo $! >"$STATE_DIR/s3.pid"
  echo "$port" >"$STATE_DIR/s3.port"
  wait_http "http://127.0.0.1:$port/" 30
  "$PYTHON" -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/$S3_BUCKET', method='PUT'))"
}

make_token() {  # this cluster's own token (Ray's token authentication), not ~/.ray/auth_token
  [[ "$AUTH" == 1 && ! -s "$STATE_DIR/auth_token" ]] || return 0
  (umask 077 && "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" >"$STATE_DIR/auth_token")
}

auth_env() {  # the variables every node and client uses to authenticate to this cluster
  if [[ "$AUTH" == 1 ]]; then
    echo "RAY_AUTH_MODE=token"
    echo "RAY_AUTH_TOKEN_PATH=$STATE_DIR/auth_token"
  else
    echo "RAY_AUTH_MODE=disabled"
  fi
}

s3_env() {  # the variables every node and client uses for the local S3
  [[ -f "$STATE_DIR/s3.port" ]] || return 0
  echo "AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$STATE_DIR/s3.port")"
  echo "AWS_ACCESS_KEY_ID=testing"
  echo "AWS_SECRET_ACCESS_KEY=testing"
  echo "AWS_REGION=us-east-1"
}

node_vars() {  # NODE_VARS: the authentication and S3 variables every node gets
  mapfile -t NODE_VARS < <(auth_env; s3_env)
}

start_head() {
  port_free "$DASHBOARD_PORT" || die "port $DASHBOARD_PORT is in use: set DASHBOARD_PORT"
  port_free "$GCS_PORT" || die "port $GCS_PORT is in use: set GCS_PORT"
  local p
  read -r -a p <<<"$(free_ports 8)"
  node_vars  # a simple command sent to the background: $! is the `ray start` process itself
  env "${NODE_VARS[@]}" setsid "$RAY" start --head --block --disable-usage-stats \
    --node-ip-address=127.0.0.1 --port="$GCS_PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="${p[0]}" --node-manager-port="${p[1]}" --object-manager-port="${p[2]}" \
    --dashboard-agent-listen-port="${p[3]}" --dashboard-agent-grpc-port="${p[4]}" \
    --runtime-env-agent-port="${p[5]}" --metrics-export-port="${p[6]}" \
    --temp-dir="$TEMP" >"$LOGS/head.log" 2>&1 &
  echo $! >"$STATE_DIR/head.pid"
  wait_log "$LOGS/head.log" "Ray runtime started" 120 "$(cat "$STATE_DIR/head.pid")"
  wait_http "http://127.0.0.1:$DASHBOARD_PORT/api/version" 120
  echo "$GCS_PORT $DASHBOARD_PORT" >"$STATE_DIR/head.ports"
}

add_worker() {  # a busy machine can miss Ray's 30 s registration deadline: one more try
  start_worker && return 0
  grep -q "timed out during startup" "$LOGS/worker-$n.log" 2>/dev/null || die "worker-$n exited; see $LOGS/worker-$n.log"
  echo "worker-$n did not register in time; trying once more" >&2
  start_worker || die "worker-$n exited; see $LOGS/worker-$n.log"
}

start_worker() {  # sets n, the new worker's number
  alive "$STATE_DIR/head.pid" || die "no head running in $STATE_DIR: run 'up' first"
  local gcs p
  read -r gcs _ <"$STATE_DIR/head.ports"
  n=$(($(find "$STATE_DIR" -maxdepth 1 -name 'worker-*.pid' | wc -l) + 1))
  while [[ -e "$STATE_DIR/worker-$n.pid" || -e "$LOGS/worker-$n.log" ]]; do n=$((n + 1)); done
  read -r -a p <<<"$(free_ports 6)"
  node_vars
  env "${NODE_VARS[@]}" setsid "$RAY" start --block --disable-usage-stats \
    --address="127.0.0.1:$gcs" --node-ip-address=127.0.0.1 --num-cpus="$WORKER_CPUS" --num-gpus=0 \
    --resources="$WORKER_RESOURCES" --node-manager-port="${p[0]}" --object-manager-port="${p[1]}" \
    --dashboard-agent-listen-port="${p[2]}" --dashboard-agent-grpc-port="${p[3]}" \
    --runtime-env-agent-port="${p[4]}" --metrics-export-port="${p[5]}" \
    --temp-dir="$TEMP" >"$LOGS/worker-$n.log" 2>&1 &
  echo $! >"$STATE_DIR/worker-$n.pid"
  if ! (wait_log "$LOGS/worker-$n.log" "Ray runtime started" 120 "$(cat "$STATE_DIR/worker-$n.pid")"); then
    rm -f "$STATE_DIR/worker-$n.pid"
    return 1
  fi
  echo "worker-$n up (pid $(cat "$STATE_DIR/worker-$n.pid"))"
}

print_env() {
  [[ -f "$STATE_DIR/head.ports" ]] || die "not up (no $STATE_DIR/head.ports)"
  local gcs dash
  read -r gcs dash <"$STATE_DIR/head.ports"
  echo "export REID_DASHBOARD=http://127.0.0.1:$dash  # reid submit / reid jobs"
  echo "export REID_RAY_GCS=127.0.0.1:$gcs  # ray.init / a job's --address"
  { auth_env; s3_env; } | sed 's/^/export /'
}

stop_node() {  # PIDFILE: SIGTERM its `ray start --block` (a clean node shutdown), then sweep
  local pidfile=$1 pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    local below
    below=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((STOP_GRACE_S * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    # shellcheck disable=SC2086
    kill -KILL $pid $below 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

kill_worker() {  # [NODE_ID]: SIGKILL that worker node (default: the newest) and all its processes
  local pidfile="" f pid
  if [[ -n "${1:-}" ]]; then
    for f in "$STATE_DIR"/worker-*.pid; do
      [[ -f "$f" ]] || continue
      for pid in $(descendants "$(cat "$f")"); do
        grep -qa -- "--node_id=$1" "/proc/$pid/cmdline" 2>/dev/null && pidfile=$f
      done
    done
    [[ -n "$pidfile" ]] || die "no worker node with id $1 in $STATE_DIR"
  else
    pidfile=$(find "$STATE_DIR" -maxdepth 1 -name 'worker-*.pid' | sort -V | tail -n 1)
    [[ -n "$pidfile" ]] || die "no worker to kill"
  fi
  pid=$(cat "$pidfile")
  # shellcheck disable=SC2046
  kill -KILL "$pid" $(descendants "$pid") 2>/dev/null || true  # all at once: a lost machine
  rm -f "$pidfile"
  echo "killed $(basename "$pidfile" .pid) (pid $pid)"
}

sweep() {  # any process still using this cluster's temp dir (Ray workers run in their own session)
  local pids
  pids=$(grep -l -a -F "$TEMP/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true)
  # shellcheck disable=SC2086
  [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
}

cmd=${1:-}
case "$cmd" in up | add-worker) mkdir -p "$STATE_DIR" "$LOGS" ;; esac
case "$cmd" in
  up)
    alive "$STATE_DIR/head.pid" && die "already up in $STATE_DIR (run 'down' first)"
    rm -f "$LOGS"/*.log
    make_token
    start_s3
    start_head
    add_worker
    print_env
    ;;
  add-worker) add_worker ;;
  kill-worker) kill_worker "${2:-}" ;;
  env) print_env ;;
  status)
    read -r gcs _ <"$STATE_DIR/head.ports" || die "not up"
    node_vars
    env "${NODE_VARS[@]}" "$RAY" status --address "127.0.0.1:$gcs"
    ;;
  down)
    for f in "$STATE_DIR"/worker-*.pid; do stop_node "$f"; done
    stop_node "$STATE_DIR/head.pid"
    stop_node "$STATE_DIR/s3.pid"
    sweep
    rm -f "$STATE_DIR/head.ports" "$STATE_DIR/s3.port"
    echo "down"
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
