#!/usr/bin/env bash
# retcd vs etcd, three members each on loopback, fresh data dirs on the same disk, driven
# by retcd-bench in one run (servers alternate). Clients spread over all three members'
# endpoints, as etcd's own benchmark tool does. Prints a markdown table (medians of $RUNS)
# and the leader failover time (SIGKILL of the leader to the first acknowledged write
# through a surviving member), $FAILOVERS times per server.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   scripts/bench-cluster.sh        # needs etcd and etcdctl on PATH (etcd-server, etcd-client)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-50000}
FAILOVERS=${FAILOVERS:-3}
BENCH=$PWD/target/release/retcd-bench
RETCD=$PWD/target/release/retcd
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
command -v etcdctl >/dev/null || { echo "etcdctl not on PATH (apt-get install etcd-client)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-cluster-XXXXXX")
declare -A PID
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source scripts/lib.sh

declare -A CPORT PPORT IC
ports=$(free_ports 12); read -ra P <<<"$ports"; k=0
for srv in etcd retcd; do
  ic=""
  for i in 0 1 2; do
    CPORT[$srv,$i]=${P[k]}; PPORT[$srv,$i]=${P[k+1]}; k=$((k + 2))
    ic="$ic,$srv$i=http://127.0.0.1:${PPORT[$srv,$i]}"
  done
  IC[$srv]=${ic#,}
done

start_member() { # srv i state
  local srv=$1 i=$2 state=$3 bin=etcd
  [ "$srv" = retcd ] && bin=$RETCD
  "$bin" --name "$srv$i" --data-dir "$work/$srv$i" \
    --listen-client-urls "http://127.0.0.1:${CPORT[$srv,$i]}" --advertise-client-urls "http://127.0.0.1:${CPORT[$srv,$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PPORT[$srv,$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PPORT[$srv,$i]}" \
    --initial-cluster "${IC[$srv]}" --initial-cluster-state "$state" --log-level error >>"$work/$srv$i.log" 2>&1 &
  PID[$srv,$i]=$!
}
endpoints() { echo "127.0.0.1:${CPORT[$1,0]},127.0.0.1:${CPORT[$1,1]},127.0.0.1:${CPORT[$1,2]}"; }

for srv in etcd retcd; do for i in 0 1 2; do start_member $srv $i new; done; done
for srv in etcd retcd; do for i in 0 1 2; do wait_ready "${CPORT[$srv,$i]}"; done; done
for srv in etcd retcd; do $BENCH --endpoints "$(endpoints $srv)" --total 1 put --key-prefix fo --key-size 3 >/dev/null; done

declare -A W=(
  [put_64]="--conns 8 --clients 64 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [put_256]="--conns 16 --clients 256 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [range_l_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency l"
  [range_s_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency s"
)
order=(put_64 put_256 range_l_64 range_s_64)
mkdir -p "$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for srv in etcd retcd; do
      # shellcheck disable=SC2086
      $BENCH --endpoints "$(endpoints $srv)" --json ${W[$w]} >"$work/results/$w,$srv,$run"
    done
  done
done

# Failover: find the leader, SIGKILL it, then one-request puts through the others until
# one is acknowledged; restart the killed member and wait until it is healthy.
leader_index() { # srv
  etcdctl --endpoints="$(endpoints "$1")" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
for x in d:
    if x["Status"]["leader"] == x["Status"]["header"]["member_id"]:
        print(x["Endpoint"]); break' | while read -r ep; do
    for i in 0 1 2; do if [ "$ep" = "127.0.0.1:${CPORT[$1,$i]}" ]; then echo "$i"; fi; done
  done
}
: >"$work/failover"
for n in $(seq 1 "$FAILOVERS"); do
  for srv in etcd retcd; do
    l=$(leader_index $srv)
    others=""
    for i in 0 1 2; do if [ "$i" != "$l" ]; then others="$others,127.0.0.1:${CPORT[$srv,$i]}"; fi; done
    others=${others#,}
    t0=$(date +%s.%N)
    kill -9 "${PID[$srv,$l]}"
    tries=0
    # retcd-bench exits 0 even when its request failed: success is errors_total 0.
    until $BENCH --endpoints "$others" --dial-timeout 200ms --request-timeout 300ms --json --total 1 put --key-prefix fo --key-size 8 2>/dev/null | grep -q '"errors_total": *0[,}]'; do
      tries=$((tries + 1)); [ $tries -lt 3000 ] || { echo "no write after failover"; exit 1; }
    done
    t1=$(date +%s.%N)
    echo "$srv $(python3 -c "print(round(($t1 - $t0) * 1000))")" >>"$work/failover"
    wait "${PID[$srv,$l]}" 2>/dev/null || true
    start_member $srv "$l" existing
    wait_ready "${CPORT[$srv,$l]}"
    sleep 2 # let the restarted member settle as a follower before the next round
  done
done

python3 - "$RUNS" "$work/results" "$work/failover" "${order[@]}" <<'PY'
import json, os, statistics, sys
runs, results, failover, order = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
raw = {name: open(os.path.join(results, name)).read() for name in os.listdir(results)}
def med(w, srv, f):
    return statistics.median(f(json.loads(raw[f"{w},{srv},{r}"])) for r in range(1, runs + 1))
rps = lambda j: j["requests_per_sec"]
p50 = lambda j: j["latency_ms"]["p50"]
p99 = lambda j: j["latency_ms"]["p99"]
errs = lambda j: j.get("errors_total", 0)
print("| workload (3 members) | etcd req/s | retcd req/s | retcd/etcd | etcd p50 / p99 ms | retcd p50 / p99 ms | errors etcd / retcd |")
print("|---|---|---|---|---|---|---|")
for w in order:
    e, r = med(w, "etcd", rps), med(w, "retcd", rps)
    print(f"| {w} | {e:,.0f} | {r:,.0f} | {r / e:.2f}x | {med(w, 'etcd', p50):.2f} / {med(w, 'etcd', p99):.2f} "
          f"| {med(w, 'retcd', p50):.2f} / {med(w, 'retcd', p99):.2f} | {med(w, 'etcd', errs):.0f} / {med(w, 'retcd', errs):.0f} |")
fo = {"etcd": [], "retcd": []}
for line in open(failover):
    srv, ms = line.split()
    fo[srv].append(int(ms))
print()
for srv in ("etcd", "retcd"):
    print(f"failover {srv}: {fo[srv]} ms (median {statistics.median(fo[srv]):.0f} ms)")
PY
