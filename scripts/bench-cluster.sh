#!/usr/bin/env bash
# Benchmarks synq as a cluster on this machine: a nats-server with JetStream and N release
# `synq serve --cluster` nodes on loopback, loaded by synq-bench with the clients spread
# over the nodes (client k on node k mod N). Prints synq-bench's JSON line with the
# cluster's figures added: CPU per node and of NATS, and JetStream appends (count and
# mean acknowledgement time) from the nodes' /metrics.
#
#   scripts/bench-cluster.sh N [synq-bench options…]
#   scripts/bench-cluster.sh local [synq-bench options…]   # one plain `synq serve`, no NATS
#
# e.g. scripts/bench-cluster.sh 3 --sessions 100 --clients 4 --messages 300 --rate 30
# Needs: cargo build --release -p synq -p synq-bench; nats-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:?usage: scripts/bench-cluster.sh N|local [synq-bench options…]}
shift
synq=target/release/synq
bench=target/release/synq-bench
[ -x "$synq" ] && [ -x "$bench" ] || { echo "build first: cargo build --release -p synq -p synq-bench" >&2; exit 2; }
work=$(mktemp -d)
# Every process started here writes its pid to $work/*.pid: start_synq runs in a command
# substitution (a subshell), whose variables do not come back.
cleanup() {
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts `synq serve ARGS…` and prints its address once it listens.
start_synq() {
  local log=$1; shift
  # As synq-bench --spawn starts a server: no AI, and no per-client or per-address caps
  # (every client of the load generator comes from 127.0.0.1).
  "$synq" serve --no-ai --listen 127.0.0.1:0 --client-rate-limit 0 --max-sessions 0 \
    --max-sessions-per-address 0 --max-connections-per-address 0 --max-connections 0 \
    "$@" >"$log.out" 2>"$log.err" &
  local pid=$!
  echo "$pid" >"$log.pid"
  for _ in $(seq 200); do
    if grep -q "^synq: listening on" "$log.out" 2>/dev/null; then
      sed -n 's|^synq: listening on http://||p' "$log.out" | head -1
      return
    fi
    sleep 0.05
  done
  echo "synq serve did not start; its log:" >&2; cat "$log.err" >&2; exit 1
}

urls=()
node_pids=()
nats_pid=
if [ "$nodes" = local ]; then
  addr=$(start_synq "$work/local" --data-dir "$work/local")
  urls+=("ws://$addr/reflector"); node_pids+=("$(cat "$work/local.pid")")
else
  port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
  nats_pid=$!; echo "$nats_pid" >"$work/nats.pid"
  for _ in $(seq 200); do grep -q "Server is ready" "$work/nats.log" && break; sleep 0.05; done
  for i in $(seq "$nodes"); do
    addr=$(start_synq "$work/n$i" --data-dir "$work/n$i" --cluster "nats://127.0.0.1:$port" \
      --cluster-listen "127.0.0.1:$(free_port)" --cluster-token bench-cluster-token-0123 --node "n$i")
    urls+=("ws://$addr/reflector"); node_pids+=("$(cat "$work/n$i.pid")")
  done
fi

args=(--url "$(IFS=,; echo "${urls[*]}")" --server-pid "${node_pids[0]}")
for p in "${node_pids[@]:1}" $nats_pid; do args+=(--also-pid "$p"); done
set +e
line=$("$bench" "${args[@]}" "$@")
status=$?
set -e

metrics=""
for u in "${urls[@]}"; do
  a=${u#ws://}; a=${a%%/*}
  metrics+=$(curl -s "http://$a/metrics" | grep -E '^synq_cluster_(journal_append|forwards|claims_total)' || true)
  metrics+=$'\n'
done
NODES="$nodes" NODE_PIDS="${node_pids[*]}" NATS_PID="$nats_pid" METRICS="$metrics" LINE="$line" python3 - <<'PY'
import json, os
out = json.loads(os.environ["LINE"])
sums = {}
for l in os.environ["METRICS"].splitlines():
    if l.strip():
        k, v = l.split()
        sums[k] = sums.get(k, 0) + float(v)
pids = os.environ["NODE_PIDS"].split()
cpu = {"n1": out.get("server_cpu_pct_of_core")}
also = out.pop("also_cpu_pct_of_core", {}) or {}
for i, p in enumerate(pids[1:], start=2):
    cpu[f"n{i}"] = also.get(p)
cluster = {"nodes": os.environ["NODES"], "node_cpu_pct_of_core": cpu}
if os.environ["NATS_PID"]:
    cluster["nats_cpu_pct_of_core"] = also.get(os.environ["NATS_PID"])
    appends = sums.get("synq_cluster_journal_appends_total", 0)
    cluster["journal_appends"] = int(appends)
    cluster["append_ack_us_mean"] = round(sums.get("synq_cluster_journal_append_microseconds_total", 0) / appends, 1) if appends else None
    cluster["forwards"] = int(sums.get("synq_cluster_forwards_total", 0))
    cluster["claims"] = int(sums.get("synq_cluster_claims_total", 0))
    if out.get("delivered"):
        cluster["appends_per_1000_deliveries"] = round(1000 * appends / out["delivered"], 2)
total = sum(v for v in cpu.values() if v is not None) + (cluster.get("nats_cpu_pct_of_core") or 0)
cluster["total_cpu_pct_of_core"] = round(total, 1)
out["cluster"] = cluster
print(json.dumps(out))
PY
exit $status
