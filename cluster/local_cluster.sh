#!/usr/bin/env bash
# A local multi-node Ray cluster on one machine: a head node and N worker nodes, each its own
# raylet with its own CPUs/GPUs and a custom resource (worker_1, worker_2, ...), every Ray
# process bound to 127.0.0.1, no dashboard, token authentication on.
#
#   cluster/local_cluster.sh start [--workers N] [--cpus-per-worker C] [--gpus-per-worker G]
#                                  [--head-cpus C] [--port P] [--dir DIR] [--no-auth]
#   eval "$(cluster/local_cluster.sh env)"          # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, ...
#   distmeta train resources.workers=2 resources.cpus_per_worker=1      # the actors land on the worker nodes
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop                    # stops exactly the processes this script started
#
# Why not one `ray start` per node: on Linux `ray start` swaps 127.0.0.1 for the machine's
# address, so a worker node cannot join a head bound to 127.0.0.1. The nodes are started by one
# keeper process with Ray's local multi-node launcher (ray.cluster_utils.Cluster) and
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's one-machine mode, which keeps every node (and the
# clients `env` sets up) on 127.0.0.1. That variable is for this one-machine cluster only: set
# anywhere else it stops `ray start --address` on Linux; nodes on separate machines, or in their
# own namespaces (cluster/box.sh), never get it. The keeper runs in
# its own session (setsid); its PID, in DIR/keeper.pid, is the process group `stop` signals.
# This script never runs `ray stop` (that stops every Ray of the user on the machine).
# State: `start` makes its directory with `mktemp -d` (0700; never a predictable path another
# user could plant first) unless --dir names one (created 0700, or refused when it is not yours
# and private), and records it in ~/.distmeta/local_cluster (0600) for env/status/stop.
# `env` prints the address the running cluster really has, and fails when none runs; `stop`
# signals a pid only after checking its command line is this directory's keeper.
# Environment: PYTHON (default python3): the interpreter with ray (and distmeta) installed.
set -euo pipefail

CMD="${1:-}"
[ $# -gt 0 ] && shift
WORKERS=2
CPUS=1
GPUS=0
HEAD_CPUS=0
PORT=6390
DIR="${LOCAL_CLUSTER_DIR:-}"   # empty: a fresh mktemp -d at start, the recorded one otherwise
POINTER="$HOME/.distmeta/local_cluster"
AUTH=token
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --cpus-per-worker) CPUS="$2"; shift 2 ;;
    --gpus-per-worker) GPUS="$2"; shift 2 ;;
    --head-cpus) HEAD_CPUS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --no-auth) AUTH=disabled; shift ;;
    *) echo "local_cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

check_private_dir() {  # the state directory must be ours and 0700, or nothing in it is trusted
  [ -d "$1" ] && [ ! -L "$1" ] || die "$1 is not a directory"
  [ "$(stat -c %u "$1")" = "$(id -u)" ] || die "$1 belongs to another user; not using it"
  [ "$(stat -c %a "$1")" = 700 ] || die "$1 is not private (mode $(stat -c %a "$1"), want 700); not using it"
}

if [ -z "$DIR" ] && [ "$CMD" != start ] && [ -f "$POINTER" ]; then DIR="$(cat "$POINTER")"; fi

write_keeper() {  # the process that owns the nodes: up until SIGTERM, then shuts every node down
  cat > "$DIR/keeper.py" <<'PY'
import os, signal, sys, time
from ray._common.utils import get_default_ray_temp_dir
from ray.cluster_utils import Cluster

os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # cluster_utils writes its address file there

d, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cpus, gpus, head_cpus = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
node = {"object_store_memory": 200 * 1024**2, "node_ip_address": "127.0.0.1"}
cluster = Cluster(initialize_head=True, head_node_args={
    **node, "gcs_server_port": port, "num_cpus": head_cpus, "num_gpus": 0, "resources": {"head": 1},
    "include_dashboard": False, "temp_dir": os.path.join(d, "ray")})
try:
    for i in range(1, workers + 1):
        cluster.add_node(**node, num_cpus=cpus, num_gpus=gpus, resources={f"worker_{i}": 1})
    cluster.wait_for_nodes()
    with open(os.path.join(d, "address.tmp"), "w") as f:
        f.write(cluster.address)
    os.replace(os.path.join(d, "address.tmp"), os.path.join(d, "address"))
    print(f"local cluster up at {cluster.address}: head + {workers} workers", flush=True)
    while not stop:
        time.sleep(0.5)
finally:
    cluster.shutdown()
    print("local cluster stopped", flush=True)
PY
}

is_keeper() {  # pid $1 runs this directory's keeper.py: checked before anything is signalled
  local cmdline
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$DIR/keeper.py $DIR "* ]]
}

keeper_alive() { [ -f "$DIR/keeper.pid" ] && is_keeper "$(cat "$DIR/keeper.pid")"; }

auth_env() {
  if [ "$(cat "$DIR/auth_mode" 2>/dev/null)" = token ]; then
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$DIR/auth_token"
  else
    echo "export RAY_AUTH_MODE=disabled"
  fi
}

print_env() {  # only for a running cluster, and its real address
  keeper_alive && [ -s "$DIR/address" ] || die "no cluster is running${DIR:+ in $DIR}; start one first"
  echo "export RAY_ADDRESS=$(cat "$DIR/address") RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0"
  auth_env
}

stop_cluster() {
  if [ ! -f "$DIR/keeper.pid" ]; then echo "local_cluster.sh: nothing to stop in $DIR"; return 0; fi
  local pgid
  pgid="$(cat "$DIR/keeper.pid")"
  if ! is_keeper "$pgid"; then  # a stale or planted pid file: never signal a process we did not start
    echo "local_cluster.sh: pid $pgid is not this cluster's keeper ($DIR/keeper.py); not signalling it" >&2
    rm -f "$DIR/keeper.pid" "$DIR/address"
    return 1
  fi
  kill -TERM "$pgid" 2>/dev/null || true            # the keeper shuts its nodes down
  for _ in $(seq 1 60); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pgid" 2>/dev/null || true        # whatever of this process group is left
  rm -f "$DIR/keeper.pid" "$DIR/address"
  echo "stopped the cluster in $DIR"
}

case "$CMD" in
  start)
    if [ -z "$DIR" ]; then
      DIR="$(mktemp -d /tmp/dmlc.XXXXXX)"           # short: Ray's socket paths live below it
    elif [ ! -e "$DIR" ]; then
      mkdir -m 700 -p "$DIR"
    fi
    check_private_dir "$DIR"
    mkdir -m 700 -p "$(dirname "$POINTER")"
    (umask 077 && echo "$DIR" > "$POINTER")
    if keeper_alive; then echo "local_cluster.sh: a cluster is already running in $DIR; stop it first" >&2; exit 1; fi
    rm -f "$DIR/address" "$DIR/keeper.pid"
    echo "$AUTH" > "$DIR/auth_mode"
    if [ "$AUTH" = token ] && [ ! -s "$DIR/auth_token" ]; then
      (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$DIR/auth_token")
    fi
    write_keeper
    eval "$(auth_env)"
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
    unset RAY_AUTH_TOKEN || true
    setsid "$PYTHON" "$DIR/keeper.py" "$DIR" "$PORT" "$WORKERS" "$CPUS" "$GPUS" "$HEAD_CPUS" \
      >"$DIR/keeper.log" 2>&1 < /dev/null &
    echo $! > "$DIR/keeper.pid"
    for _ in $(seq 1 240); do
      [ -f "$DIR/address" ] && break
      if ! kill -0 "$(cat "$DIR/keeper.pid")" 2>/dev/null; then
        echo "local_cluster.sh: the cluster failed to start; see $DIR/keeper.log:" >&2
        tail -n 20 "$DIR/keeper.log" >&2
        stop_cluster >/dev/null
        exit 1
      fi
      sleep 0.5
    done
    if [ ! -f "$DIR/address" ]; then
      echo "local_cluster.sh: no cluster after 120 s; see $DIR/keeper.log" >&2
      stop_cluster
      exit 1
    fi
    echo "started: head + $WORKERS workers on 127.0.0.1 (auth: $AUTH); use it with:"
    print_env
    ;;
  env)
    [ -n "$DIR" ] || die "no cluster was started (nothing recorded in $POINTER)"
    check_private_dir "$DIR"
    print_env
    ;;
  status)
    if keeper_alive; then
      echo "running: keeper pid $(cat "$DIR/keeper.pid"), address $(cat "$DIR/address" 2>/dev/null || echo starting)"
    else
      echo "not running ($DIR)"
      exit 1
    fi
    ;;
  stop)
    [ -n "$DIR" ] || { echo "local_cluster.sh: nothing to stop"; exit 0; }
    check_private_dir "$DIR"
    stop_cluster
    ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
