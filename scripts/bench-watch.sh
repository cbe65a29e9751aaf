#!/usr/bin/env bash
# Watch delivery, retcd vs etcd (single member each, same disk, one run): N watchers on a
# prefix over S streams while puts run at full speed. Prints a markdown table of medians
# over $RUNS runs (alternating servers): delivered events per second, delivery latency
# (put sent -> event received) p50/p99, the put rate, and the server's CPU time per
# million events delivered (user + system, from /proc: the client shares the cores, so
# this is the server's own cost), and how many events each response carried.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   scripts/bench-watch.sh                    # needs etcd on PATH (Debian etcd-server)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-4000}
BENCH=target/release/retcd-bench
RETCD=target/release/retcd
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

ports=$(free_ports 4); read -r ep ep2 rp rp2 <<<"$ports"
start_single etcd bench "$work/etcd" "$ep" "$ep2"; etcd_pid=${pids[-1]}
start_single "$RETCD" bench "$work/retcd" "$rp" "$rp2"; retcd_pid=${pids[-1]}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_ready "$ep"; wait_ready "$rp"

declare -A W=(
  [w1000_s10_c16]="--conns 4 --clients 16 --total $TOTAL watch --watchers 1000 --streams 10"
  [w1000_s1_c16]="--conns 4 --clients 16 --total $TOTAL watch --watchers 1000 --streams 1"
  [w1000_s100_c16]="--conns 4 --clients 16 --total $TOTAL watch --watchers 1000 --streams 100"
  [w1000_s10_c64]="--conns 4 --clients 64 --total $TOTAL watch --watchers 1000 --streams 10"
)
order=(w1000_s10_c16 w1000_s1_c16 w1000_s100_c16 w1000_s10_c64)
mkdir -p "$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for srv in etcd retcd; do
      port=$ep; pid=$etcd_pid; [ $srv = retcd ] && port=$rp && pid=$retcd_pid
      before=$(cpu_ticks "$pid")
      # shellcheck disable=SC2086
      $BENCH --endpoints "127.0.0.1:$port" --json ${W[$w]} >"$work/results/$w,$srv,$run"
      echo $(( $(cpu_ticks "$pid") - before )) >"$work/results/$w,$srv,$run.cpu"
    done
  done
done

python3 - "$RUNS" "$work/results" "$(getconf CLK_TCK)" "${order[@]}" <<'PY'
import json, os, statistics, sys
runs, results, tck, order = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
def load(w, srv, r):
    j = json.load(open(os.path.join(results, f"{w},{srv},{r}")))
    # A put the server refused (etcd's "too many requests" under this load, say) is
    # counted, not fatal: it is not waited for. Every accepted put's event must arrive.
    watch_errors = j["series"]["watch-event"]["errors"]
    assert not watch_errors, f"{w} {srv} run {r}: {watch_errors}"
    c = j["counters"]
    assert c["events_received"] == c["events_expected"], f"{w} {srv} run {r}: missing events"
    j["cpu_s"] = int(open(os.path.join(results, f"{w},{srv},{r}.cpu")).read()) / tck
    return j
def med(w, srv, f):
    return statistics.median(f(load(w, srv, r)) for r in range(1, runs + 1))
def total(w, srv, f):
    return sum(f(load(w, srv, r)) for r in range(1, runs + 1))
ev = lambda j: j["series"]["watch-event"]["requests_per_sec"]
p50 = lambda j: j["series"]["watch-event"]["latency_ms"]["p50"]
p99 = lambda j: j["series"]["watch-event"]["latency_ms"]["p99"]
puts = lambda j: j["series"]["put"]["requests_per_sec"]
cpu = lambda j: j["cpu_s"] / (j["counters"]["events_received"] / 1e6)
put_errors = lambda j: sum(j["series"]["put"]["errors"].values())
per_resp = lambda j: j["counters"]["events_received"] / max(1, j["counters"]["event_responses_received"])
print("| workload | etcd events/s | retcd events/s | retcd/etcd | etcd p50 / p99 ms | retcd p50 / p99 ms | etcd / retcd puts/s | etcd / retcd server CPU s per 1M events | etcd / retcd events per response | etcd / retcd refused puts (all runs) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for w in order:
    e, r = med(w, "etcd", ev), med(w, "retcd", ev)
    print(f"| {w} | {e:,.0f} | {r:,.0f} | {r / e:.2f}x | {med(w, 'etcd', p50):.1f} / {med(w, 'etcd', p99):.1f} "
          f"| {med(w, 'retcd', p50):.1f} / {med(w, 'retcd', p99):.1f} | {med(w, 'etcd', puts):,.0f} / {med(w, 'retcd', puts):,.0f} "
          f"| {med(w, 'etcd', cpu):.3f} / {med(w, 'retcd', cpu):.3f} "
          f"| {med(w, 'etcd', per_resp):.1f} / {med(w, 'retcd', per_resp):.1f} "
          f"| {total(w, 'etcd', put_errors)} / {total(w, 'retcd', put_errors)} |")
PY
