#!/usr/bin/env bash
# Two retcd builds side by side (A and B), single member each, fresh data dirs on the
# same disk, driven by retcd-bench in one run with the servers alternating. For telling a
# change's effect from the VM's day-to-day noise: both builds meet the same noise.
# Prints each run and the medians of $RUNS runs per workload.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   A=/path/to/old/retcd B=target/release/retcd scripts/bench-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
TOTAL=${TOTAL:-100000}
A=${A:?set A to the first retcd binary}
B=${B:-target/release/retcd}
BENCH=target/release/retcd-bench
source scripts/lib.sh
work=$(mktemp -d "$PWD/target/bench-ab-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

ports=$(free_ports 4); read -r ap ap2 bp bp2 <<<"$ports"
start_single "$A" bench "$work/a" "$ap" "$ap2"
start_single "$B" bench "$work/b" "$bp" "$bp2"
wait_ready "$ap"; wait_ready "$bp"
for p in $ap $bp; do $BENCH --endpoints "127.0.0.1:$p" --total 1 put --key-prefix fo --key-size 3 >/dev/null; done

declare -A W=(
  [put_64]="--conns 8 --clients 64 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [range_l_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency l"
  [range_s_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency s"
)
order=(put_64 range_l_64 range_s_64)
: >"$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for srv in A B; do
      port=$ap; [ $srv = B ] && port=$bp
      # shellcheck disable=SC2086
      rps=$($BENCH --endpoints "127.0.0.1:$port" --json ${W[$w]} | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests_per_sec"])')
      echo "$w $srv $rps" | tee -a "$work/results"
    done
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    w, srv, rps = line.split()
    runs.setdefault(w, {}).setdefault(srv, []).append(float(rps))
print("\n| workload | A req/s (median) | B req/s (median) | B/A |")
print("|---|---|---|---|")
for w, by in runs.items():
    a, b = statistics.median(by["A"]), statistics.median(by["B"])
    print(f"| {w} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
PY
