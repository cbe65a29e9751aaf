#!/usr/bin/env bash
# Auth on (simple tokens), retcd and etcd 3.4.23 side by side in one run (issue 15).
# Two single-member servers, each with a fresh data dir on the same disk, auth enabled
# through etcdctl with a non-root user `bench` granted readwrite on every key (so every
# request takes the permission check) and etcd's default bcrypt cost. retcd-bench logs
# in as `bench` and drives, on each server in a rotated order:
#   put_64      64 clients put, auth on;
#   range_l_64  64 clients linearizable range, auth on;
#   put_64+login the same puts while 100 more clients log in as fast as they can
#               (retcd-bench authenticate, in the background for the whole put run);
#   login_100   100 clients logging in alone (bcrypt at cost 10: CPU-bound).
# Prints a markdown table of medians of $RUNS runs, and put_64+login / put_64 per server.
# Every figure is a rate (req/s). put_64+login runs $TOTAL puts on retcd but only
# $ETCD_LOGIN_PUTS on etcd: etcd serves a few dozen puts a second while the logins run,
# so $TOTAL would take it most of an hour; a few thousand take it tens of seconds.
#
#   cargo build --release --bin retcd --bin retcd-bench
#   flock /tmp/cargo.lock scripts/bench-auth.sh   # etcd and etcdctl on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-100000}
ETCD_LOGIN_PUTS=${ETCD_LOGIN_PUTS:-2000}
BENCH=target/release/retcd-bench
RETCD=${RETCD:-target/release/retcd}
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
command -v etcdctl >/dev/null || { echo "etcdctl not on PATH (apt-get install etcd-client)"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source scripts/lib.sh

servers=(etcd retcd)
ports=$(free_ports 4); read -r p1 p2 q1 q2 <<<"$ports"
declare -A PORT=([etcd]=$p1 [retcd]=$p2)
start_single etcd etcd "$work/etcd" "$p1" "$q1"
start_single "$RETCD" retcd "$work/retcd" "$p2" "$q2"
wait_ready "$p1"; wait_ready "$p2"
for s in "${servers[@]}"; do
  ctl() { ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${PORT[$s]}" "$@" >/dev/null; }
  ctl user add root:rootpw
  ctl user grant-role root root
  ctl user add bench:benchpw
  ctl role add bench
  ctl role grant-permission bench readwrite "" --from-key
  ctl user grant-role bench bench
  ctl auth enable
  $BENCH --endpoints "127.0.0.1:${PORT[$s]}" --user bench:benchpw --total 1 put --key-prefix fo --key-size 3 >/dev/null
done

AUTH=(--user bench:benchpw)
PUT="--conns 8 --clients 64 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
declare -A W=(
  [put_64]="$PUT"
  [range_l_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency l"
  [put_64+login]="$PUT"
  [login_100]="--conns 4 --clients 100 --total 400 authenticate"
)
order=(put_64 range_l_64 put_64+login login_100)
mkdir -p "$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for i in 0 1; do
      s=${servers[$(((i + run - 1) % 2))]}
      logins=
      if [ "$w" = "put_64+login" ]; then
        # Bounded by its total and killed once the puts are done.
        $BENCH --endpoints "127.0.0.1:${PORT[$s]}" "${AUTH[@]}" --json --conns 4 --clients 100 \
          --total 10000000 authenticate >"$work/results/logins,$s,$run" 2>/dev/null &
        logins=$!
      fi
      args=${W[$w]}
      if [ "$w" = "put_64+login" ] && [ "$s" = etcd ]; then
        args=${args/--total $TOTAL/--total $ETCD_LOGIN_PUTS}
      fi
      # shellcheck disable=SC2086
      $BENCH --endpoints "127.0.0.1:${PORT[$s]}" "${AUTH[@]}" --json $args >"$work/results/$w,$s,$run"
      if [ -n "$logins" ]; then kill "$logins" 2>/dev/null || true; wait "$logins" 2>/dev/null || true; fi
    done
  done
done

python3 - "$RUNS" "$work/results" "${order[@]}" <<'PY'
import json, os, statistics, sys
runs, results, order = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
raw = {}
for n in os.listdir(results):
    text = open(os.path.join(results, n)).read()
    if text.strip():
        raw[n] = json.loads(text)
def med(w, s, f):
    return statistics.median(f(raw[f"{w},{s},{r}"]) for r in range(1, runs + 1))
rps = lambda j: j["requests_per_sec"]
p99 = lambda j: j["latency_ms"]["p99"]
print("| workload (auth on) | etcd req/s | retcd req/s | retcd/etcd | etcd p99 ms | retcd p99 ms |")
print("|---|---|---|---|---|---|")
for w in order:
    e, r = med(w, "etcd", rps), med(w, "retcd", rps)
    print(f"| {w} | {e:,.0f} | {r:,.0f} | {r / e:.2f}x | {med(w, 'etcd', p99):.2f} | {med(w, 'retcd', p99):.2f} |")
print()
for s in ("etcd", "retcd"):
    a, b = med("put_64", s, rps), med("put_64+login", s, rps)
    print(f"{s}: put_64 while 100 clients log in / put_64 alone = {b / a:.2f}")
print()
print("every run (req/s):")
for w in order:
    for s in ("etcd", "retcd"):
        print(f"  {w} {s}: " + " ".join(f"{rps(raw[f'{w},{s},{r}']):.0f}" for r in range(1, runs + 1)))
for n, j in sorted(raw.items()):
    if j.get("errors_total") and not n.startswith("logins"):
        print(f"WARNING: {n} had {j['errors_total']} errors: {j.get('errors')}")
PY
