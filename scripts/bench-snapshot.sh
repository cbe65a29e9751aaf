#!/usr/bin/env bash
# Snapshots of a 1 GB store while it serves writes, retcd and etcd 3.4.23 side by side in
# one run (issue 16, acceptance 3).
#
# Two single-member servers, each with a fresh data dir on the same disk and a 4 GiB quota,
# are filled with $FILL_KEYS distinct keys of $FILL_VAL-byte values (10,000 x 100,000 B:
# 1 GB of live data). Then, on each server in a rotated order, $RUNS times:
#   put_64      64 clients put $TOTAL 256-byte values over 100,000 keys (no snapshot);
#   snapshot    one Maintenance.Snapshot stream read to its end and thrown away by
#               retcd-bench (no file written, so the client's disk is not what is measured),
#               while the server's /proc/PID/status is sampled every 20 ms: the peak VmRSS
#               (and RssAnon, RssFile) during the stream minus the value just before it;
#   put_64+snap the same puts while snapshots stream back to back in the background
#               (retcd-bench snapshot, one client, restarted as each ends; killed once the
#               puts are done), with the same RSS sampling.
# Prints a markdown table of medians of $RUNS runs, and put_64+snap / put_64 per server.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   flock /tmp/cargo.lock scripts/bench-snapshot.sh   # etcd on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-100000}
FILL_KEYS=${FILL_KEYS:-10000}
FILL_VAL=${FILL_VAL:-100000}
BENCH=target/release/retcd-bench
RETCD=${RETCD:-target/release/retcd}
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source scripts/lib.sh

servers=(etcd retcd)
ports=$(free_ports 4); read -r p1 p2 q1 q2 <<<"$ports"
declare -A PORT=([etcd]=$p1 [retcd]=$p2)
QUOTA=(--quota-backend-bytes $((4 << 30)))
start_single etcd etcd "$work/etcd" "$p1" "$q1" "${QUOTA[@]}"
declare -A PID=([etcd]=${pids[-1]})
start_single "$RETCD" retcd "$work/retcd" "$p2" "$q2" "${QUOTA[@]}"
PID[retcd]=${pids[-1]}
wait_ready "$p1"; wait_ready "$p2"

for s in "${servers[@]}"; do
  $BENCH --endpoints "127.0.0.1:${PORT[$s]}" --conns 4 --clients 16 --total "$FILL_KEYS" \
    --request-timeout 60s put --key-prefix big/ --key-size 12 --val-size "$FILL_VAL" \
    --sequential-keys --key-space-size "$FILL_KEYS" >/dev/null
  echo "$s filled: $(du -sh "$work/$s" | cut -f1) on disk, RSS $(grep VmRSS "/proc/${PID[$s]}/status" | awk '{print $2}') kB" >&2
done

# sample <pid> <file>: one "VmRSS RssAnon RssFile" line (kB) every 20 ms until killed.
sample() {
  while :; do
    awk '/^(VmRSS|RssAnon|RssFile):/ {v[$1] = $2} END {print v["VmRSS:"], v["RssAnon:"], v["RssFile:"]}' "/proc/$1/status"
    sleep 0.02
  done >"$2"
}
# rss_growth <pid> <samples file> <out>: {"rss":..,"anon":..,"file":..} in MiB, the peak of
# each during the samples minus its value before them (measured now, before the work starts:
# call before_rss first).
before_rss() { awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2}' "/proc/$1/status"; }
rss_growth() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
before = [int(x) for x in sys.argv[1].split()]
peak = before[:]
for line in open(sys.argv[2]):
    parts = line.split()
    if len(parts) == 3:
        peak = [max(p, int(x)) for p, x in zip(peak, parts)]
names = ("rss", "anon", "file")
json.dump({n: (p - b) / 1024 for n, p, b in zip(names, peak, before)}, open(sys.argv[3], "w"))
PY
}

PUT="--conns 8 --clients 64 --total $TOTAL put --key-prefix small/ --key-size 12 --val-size 256 --sequential-keys --key-space-size 100000"
SNAP="--conns 1 --clients 1 --request-timeout 600s"
order=(put_64 snapshot put_64+snap)
mkdir -p "$work/results"
for run in $(seq 1 "$RUNS"); do
  for w in "${order[@]}"; do
    for i in 0 1; do
      s=${servers[$(((i + run - 1) % 2))]}
      ep="127.0.0.1:${PORT[$s]}"
      out="$work/results/$w,$s,$run"
      case $w in
        put_64)
          # shellcheck disable=SC2086
          $BENCH --endpoints "$ep" --json $PUT >"$out" ;;
        snapshot)
          before=$(before_rss "${PID[$s]}")
          sample "${PID[$s]}" "$out.samples" & sampler=$!
          # shellcheck disable=SC2086
          $BENCH --endpoints "$ep" --json $SNAP --total 1 snapshot >"$out"
          kill "$sampler"; wait "$sampler" 2>/dev/null || true
          rss_growth "$before" "$out.samples" "$out.rss" ;;
        put_64+snap)
          before=$(before_rss "${PID[$s]}")
          sample "${PID[$s]}" "$out.samples" & sampler=$!
          # Bounded by its total and killed once the puts are done.
          # shellcheck disable=SC2086
          $BENCH --endpoints "$ep" --json $SNAP --total 1000 snapshot >/dev/null 2>&1 & snaps=$!
          # The first stream's first bytes, so the puts start while one streams.
          sleep 0.5
          # shellcheck disable=SC2086
          $BENCH --endpoints "$ep" --json $PUT >"$out"
          kill "$snaps" 2>/dev/null || true; wait "$snaps" 2>/dev/null || true
          kill "$sampler"; wait "$sampler" 2>/dev/null || true
          rss_growth "$before" "$out.samples" "$out.rss" ;;
      esac
    done
  done
done

python3 - "$RUNS" "$work/results" <<'PY'
import json, os, statistics, sys
runs, results = int(sys.argv[1]), sys.argv[2]
def load(name):
    return json.load(open(os.path.join(results, name)))
def med(w, s, f):
    return statistics.median(f(w, s, r) for r in range(1, runs + 1))
rps = lambda w, s, r: load(f"{w},{s},{r}")["requests_per_sec"]
rss = lambda k: (lambda w, s, r: load(f"{w},{s},{r}.rss")[k])
snap_bytes = lambda w, s, r: load(f"{w},{s},{r}")["counters"]["bytes"]
snap_secs = lambda w, s, r: 1 / rps(w, s, r)
print("| server | put_64 req/s | put_64 while snapshots stream req/s | ratio | snapshot bytes | snapshot alone MB/s | RSS growth, snapshot alone (VmRSS / RssAnon / RssFile MiB) | RSS growth, snapshots during puts (VmRSS / RssAnon / RssFile MiB) |")
print("|---|---|---|---|---|---|---|---|")
for s in ("etcd", "retcd"):
    a, b = med("put_64", s, rps), med("put_64+snap", s, rps)
    size = med("snapshot", s, snap_bytes)
    mbps = size / 1e6 / med("snapshot", s, snap_secs)
    g1 = " / ".join(f"{med('snapshot', s, rss(k)):.0f}" for k in ("rss", "anon", "file"))
    g2 = " / ".join(f"{med('put_64+snap', s, rss(k)):.0f}" for k in ("rss", "anon", "file"))
    print(f"| {s} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {size:,.0f} | {mbps:,.0f} | {g1} | {g2} |")
print()
print("every run:")
for s in ("etcd", "retcd"):
    for w in ("put_64", "put_64+snap"):
        print(f"  {w} {s} req/s: " + " ".join(f"{rps(w, s, r):.0f}" for r in range(1, runs + 1)))
    for w in ("snapshot", "put_64+snap"):
        print(f"  {w} {s} VmRSS growth MiB: " + " ".join(f"{rss('rss')(w, s, r):.0f}" for r in range(1, runs + 1)))
for n in sorted(os.listdir(results)):
    if n.endswith((".rss", ".samples")):
        continue
    j = load(n)
    if j.get("errors_total"):
        print(f"WARNING: {n} had {j['errors_total']} errors: {j.get('errors')}")
PY
