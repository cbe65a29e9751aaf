#!/usr/bin/env bash
# Client TLS against plaintext, retcd and etcd 3.4.23 side by side in one run (issue 14).
# Four single-member servers, each with a fresh data dir on the same disk: retcd and etcd
# in plaintext, and retcd and etcd with client TLS and client certificate auth
# (--cert-file --key-file --trusted-ca-file --client-cert-auth), all four with the same
# certificates (made here with openssl: an ECDSA P-256 CA, a server certificate for
# IP 127.0.0.1, a client certificate). retcd-bench drives the put and linearizable range
# workloads of the single-member benchmark against each; every run visits the four
# servers in a rotated order, so machine noise hits them alike. Prints the TLS version and
# cipher each TLS server picks for a client with rustls' preferences, and a markdown table
# (medians of $RUNS runs).
#
#   cargo build --release --bin retcd --bin retcd-bench
#   flock /tmp/cargo.lock scripts/bench-tls.sh   # etcd and openssl on PATH; holding the
#                                                # lock keeps builds off the cores meanwhile
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TOTAL=${TOTAL:-100000}
BENCH=target/release/retcd-bench
RETCD=${RETCD:-target/release/retcd}
command -v etcd >/dev/null || { echo "etcd not on PATH (apt-get install etcd-server)"; exit 1; }
command -v openssl >/dev/null || { echo "openssl not on PATH"; exit 1; }
work=$(mktemp -d "$PWD/target/bench-XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source scripts/lib.sh

# --- certificates -------------------------------------------------------------------
pki=$work/pki
mkdir -p "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" -days 3650 \
  -subj "/CN=retcd bench CA" 2>/dev/null
# leaf <name> <CN> <extensions>: a key and a certificate signed by the CA.
leaf() {
  openssl req -new "${ec[@]}" -keyout "$pki/$1-key.pem" -out "$pki/$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%b' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
    -CAcreateserial -days 3650 -sha256 -extfile "$pki/$1.ext" -out "$pki/$1.pem" 2>/dev/null
}
# The server certificate also serves as a client one (etcd's gateway dials itself with it).
leaf server 127.0.0.1 "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n"
leaf client bench "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
tls_server=(--cert-file "$pki/server.pem" --key-file "$pki/server-key.pem"
  --trusted-ca-file "$pki/ca.pem" --client-cert-auth)
tls_client=(--cacert "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client-key.pem")
curl_tls=(--cacert "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client-key.pem")

# --- servers ------------------------------------------------------------------------
# start <etcd|retcd binary> <name> <scheme> <client port> <peer port> [extra flags...]
start() {
  local bin=$1 name=$2 scheme=$3 cp=$4 pp=$5; shift 5
  "$bin" --name "$name" --data-dir "$work/$name" --listen-client-urls "$scheme://127.0.0.1:$cp" \
    --advertise-client-urls "$scheme://127.0.0.1:$cp" --listen-peer-urls "http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "$name=http://127.0.0.1:$pp" \
    --log-level error "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
# Waits (up to 20 s) until the TLS server on $1 answers /health to a client certificate.
wait_ready_tls() {
  for _ in $(seq 1 400); do
    curl -fs "${curl_tls[@]}" "https://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.05
  done; echo "TLS server on $1 not ready"; exit 1
}

servers=(etcd_plain etcd_tls retcd_plain retcd_tls)
ports=$(free_ports 8); read -r p1 p2 p3 p4 q1 q2 q3 q4 <<<"$ports"
declare -A PORT=([etcd_plain]=$p1 [etcd_tls]=$p2 [retcd_plain]=$p3 [retcd_tls]=$p4)
declare -A TLSFLAGS=([etcd_plain]="" [etcd_tls]="${tls_client[*]}" [retcd_plain]="" [retcd_tls]="${tls_client[*]}")
start etcd etcd_plain http "$p1" "$q1"
start etcd etcd_tls https "$p2" "$q2" "${tls_server[@]}"
start "$RETCD" retcd_plain http "$p3" "$q3"
start "$RETCD" retcd_tls https "$p4" "$q4" "${tls_server[@]}"
wait_ready "$p1"; wait_ready "$p3"; wait_ready_tls "$p2"; wait_ready_tls "$p4"
for s in "${servers[@]}"; do
  # shellcheck disable=SC2086
  $BENCH --endpoints "127.0.0.1:${PORT[$s]}" ${TLSFLAGS[$s]} --total 1 put --key-prefix fo --key-size 3 >/dev/null
done

# What each TLS server negotiates with a client offering rustls' order (TLS 1.3 first,
# AES-256-GCM before AES-128-GCM before ChaCha20), as retcd-bench does.
for s in etcd_tls retcd_tls; do
  hs=$(openssl s_client -connect "127.0.0.1:${PORT[$s]}" -servername 127.0.0.1 -alpn h2 \
    -ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 \
    -CAfile "$pki/ca.pem" -cert "$pki/client.pem" -key "$pki/client-key.pem" </dev/null 2>/dev/null |
    tr -d '\0' || true)
  echo "$s: $(grep -m1 -o 'New, [^,]*, Cipher is .*' <<<"$hs"), $(grep -m1 -o 'ALPN protocol: .*' <<<"$hs")"
done
echo

# --- workloads ----------------------------------------------------------------------
declare -A W=(
  [put_64]="--conns 8 --clients 64 --total $TOTAL put --key-size 8 --val-size 256 --sequential-keys --key-space-size 100000"
  [range_l_64]="--conns 8 --clients 64 --total $TOTAL range fo0 --consistency l"
)
order=(put_64 range_l_64)
mkdir -p "$work/results"
for w in "${order[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for i in 0 1 2 3; do
      s=${servers[$(((i + run - 1) % 4))]}
      # shellcheck disable=SC2086
      $BENCH --endpoints "127.0.0.1:${PORT[$s]}" ${TLSFLAGS[$s]} --json ${W[$w]} >"$work/results/$w,$s,$run"
    done
  done
done

python3 - "$RUNS" "$work/results" "${order[@]}" <<'PY'
import json, os, statistics, sys
runs, results, order = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
raw = {n: json.loads(open(os.path.join(results, n)).read()) for n in os.listdir(results)}
def med(w, s, f):
    return statistics.median(f(raw[f"{w},{s},{r}"]) for r in range(1, runs + 1))
rps = lambda j: j["requests_per_sec"]
p99 = lambda j: j["latency_ms"]["p99"]
print("| workload | server | plain req/s | TLS req/s | TLS/plain | plain p99 ms | TLS p99 ms |")
print("|---|---|---|---|---|---|---|")
for w in order:
    for srv in ("etcd", "retcd"):
        a, b = med(w, f"{srv}_plain", rps), med(w, f"{srv}_tls", rps)
        print(f"| {w} | {srv} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x | "
              f"{med(w, f'{srv}_plain', p99):.2f} | {med(w, f'{srv}_tls', p99):.2f} |")
print()
print("| workload | mode | etcd req/s | retcd req/s | retcd/etcd |")
print("|---|---|---|---|---|")
for w in order:
    for mode in ("plain", "tls"):
        e, r = med(w, f"etcd_{mode}", rps), med(w, f"retcd_{mode}", rps)
        print(f"| {w} | {mode} | {e:,.0f} | {r:,.0f} | {r / e:.2f}x |")
print()
print("every run (req/s):")
for w in order:
    for s in ("etcd_plain", "etcd_tls", "retcd_plain", "retcd_tls"):
        print(f"  {w} {s}: " + " ".join(f"{rps(raw[f'{w},{s},{r}']):.0f}" for r in range(1, runs + 1)))
for n, j in sorted(raw.items()):
    if j["errors_total"]:
        print(f"WARNING: {n} had {j['errors_total']} errors: {j.get('errors')}")
PY
