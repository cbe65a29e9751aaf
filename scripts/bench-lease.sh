#!/usr/bin/env bash
# Leases, retcd vs etcd (single member each, same disk, one run): the lease cycle (grant,
# put with the lease, revoke) and keep-alives over 10,000 leases. Prints a markdown table
# of medians over $RUNS runs, alternating servers.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   scripts/bench-lease.sh                    # needs etcd on PATH (Debian etcd-server)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-20000}
BENCH=target/release/retcd-bench
RETCD=target/release/retcd
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

ports=$(free_ports 4); read -r ep ep2 rp rp2 <<<"$ports"
start_single etcd bench "$work/etcd" "$ep" "$ep2"
start_single "$RETCD" bench "$work/retcd" "$rp" "$rp2"
wait_ready "$ep"; wait_ready "$rp"

declare -A W=(
  [lease_cycle_64]="--conns 8 --clients 64 --total $TOTAL lease"
  [lease_cycle_1]="--conns 1 --clients 1 --total $((TOTAL / 20)) lease"
  [keepalive_10k]="--conns 8 --clients 64 --total $((TOTAL * 5)) lease-keepalive --leases 10000"
)
order=(lease_cycle_64 lease_cycle_1 keepalive_10k)
mkdir -p "$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for srv in etcd retcd; do
      port=$ep; [ $srv = retcd ] && port=$rp
      # shellcheck disable=SC2086
      $BENCH --endpoints "127.0.0.1:$port" --json ${W[$w]} >"$work/results/$w,$srv,$run"
    done
  done
done

python3 - "$RUNS" "$work/results" "${order[@]}" <<'PY'
import json, os, statistics, sys
runs, results, order = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def load(w, srv, r):
    j = json.load(open(os.path.join(results, f"{w},{srv},{r}")))
    assert j["errors_total"] == 0, f"{w} {srv} run {r}: {j['errors']}"
    return j
def med(w, srv, f):
    return statistics.median(f(load(w, srv, r)) for r in range(1, runs + 1))
rps = lambda j: j["requests_per_sec"]
p50 = lambda j: j["latency_ms"]["p50"]
p99 = lambda j: j["latency_ms"]["p99"]
print("| workload | etcd req/s | retcd req/s | retcd/etcd | etcd p50 / p99 ms | retcd p50 / p99 ms |")
print("|---|---|---|---|---|---|")
for w in order:
    e, r = med(w, "etcd", rps), med(w, "retcd", rps)
    print(f"| {w} | {e:,.0f} | {r:,.0f} | {r / e:.2f}x | {med(w, 'etcd', p50):.2f} / {med(w, 'etcd', p99):.2f} "
          f"| {med(w, 'retcd', p50):.2f} / {med(w, 'retcd', p99):.2f} |")
PY
