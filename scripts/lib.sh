# Shared helpers of the benchmark scripts (sourced, not run).

# A TCP port nobody listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 20 s) until the server on client port $1 answers /health.
wait_ready() { for _ in $(seq 1 400); do curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 not ready"; exit 1; }

# start_single <etcd|retcd binary> <name> <dir> <client port> <peer port> [extra flags...]
# Starts a single-member server in the background; appends its pid to the `pids` array.
start_single() {
  local bin=$1 name=$2 dir=$3 cp=$4 pp=$5; shift 5
  "$bin" --name "$name" --data-dir "$dir" --listen-client-urls "http://127.0.0.1:$cp" \
    --advertise-client-urls "http://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "$name=http://127.0.0.1:$pp" \
    --log-level error "$@" >"$dir.log" 2>&1 &
  pids+=($!)
}
