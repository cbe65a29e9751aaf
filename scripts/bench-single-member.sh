#!/usr/bin/env bash
# retcd vs etcd, single member each, fresh data dirs on the same disk, driven by
# retcd-bench in one run. Prints a markdown table (medians of $RUNS runs, alternating
# servers) and the disk's fsync latency measured in the same run.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   scripts/bench-single-member.sh            # needs etcd on PATH (Debian etcd-server)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-100000}
BENCH=target/release/retcd-bench
RETCD=${RETCD:-target/release/retcd}
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source scripts/lib.sh

ports=$(free_ports 4); read -r ep ep2 rp rp2 <<<"$ports"
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
  --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$ep2" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ep2" --initial-cluster "bench=http://127.0.0.1:$ep2" \
  --log-level error >"$work/etcd.log" 2>&1 & pids+=($!)
$RETCD --name bench --data-dir "$work/retcd" --listen-client-urls "http://127.0.0.1:$rp" \
  --advertise-client-urls "http://127.0.0.1:$rp" --listen-peer-urls "http://127.0.0.1:$rp2" \
  --initial-advertise-peer-urls "http://127.0.0.1:$rp2" --initial-cluster "bench=http://127.0.0.1:$rp2" \
  --log-level error >"$work/retcd.log" 2>&1 & pids+=($!)
wait_ready "$ep"; wait_ready "$rp"
for p in $ep $rp; do $BENCH --endpoints "127.0.0.1:$p" --total 1 put --key-prefix fo --key-size 3 >/dev/null; done

# fsync: 2,000 appends of 256 B to a pre-written file, each followed by fdatasync.
fsync_p50=$(python3 - "$work/fsync.bin" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644); os.write(fd, b"\0" * (1 << 20)); os.fsync(fd)
lat = []
for i in range(2000):
    t = time.perf_counter(); os.pwrite(fd, b"x" * 256, i * 256); os.fdatasync(fd); lat.append(time.perf_counter() - t)
lat.sort(); print("%.3f" % (lat[len(lat) // 2] * 1e3))
PY
)

declare -A W=(
  [put_64]="--conns 8 --clients 64 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [put_1]="--conns 1 --clients 1 --total $((TOTAL / 20)) put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [range_l_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency l"
  [range_s_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency s"
)
order=(put_64 range_l_64 range_s_64 put_1)
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

python3 - "$fsync_p50" "$RUNS" "$work/results" "${order[@]}" <<'PY'
import json, os, statistics, sys
fsync, runs, results, order = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
raw = {name: open(os.path.join(results, name)).read() for name in os.listdir(results)}
def med(w, srv, f):
    vals = []
    for r in range(1, runs + 1):
        j = json.loads(raw[f"{w},{srv},{r}"])
        vals.append(f(j))
    return statistics.median(vals)
rps = lambda j: j["requests_per_sec"]
p50 = lambda j: j["latency_ms"]["p50"]
p99 = lambda j: j["latency_ms"]["p99"]
print(f"fsync (fdatasync after a 256 B write) p50: {fsync:.3f} ms\n")
print("| workload | etcd req/s | retcd req/s | retcd/etcd | etcd p50 / p99 ms | retcd p50 / p99 ms |")
print("|---|---|---|---|---|---|")
for w in order:
    e, r = med(w, "etcd", rps), med(w, "retcd", rps)
    print(f"| {w} | {e:.0f} | {r:.0f} | {r / e:.2f}x | {med(w,'etcd',p50):.2f} / {med(w,'etcd',p99):.2f} | {med(w,'retcd',p50):.2f} / {med(w,'retcd',p99):.2f} |")
for w in order:
    for srv in ("etcd", "retcd"):
        n = sum(1 for r in range(1, runs + 1) if json.loads(raw[f"{w},{srv},{r}"])["errors_total"])
        if n: print(f"WARNING: {srv} {w} had errors in {n} runs")
PY
