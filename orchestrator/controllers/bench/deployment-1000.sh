#!/usr/bin/env bash
# Benchmark: a Deployment of 1,000 replicas with 100 fake Node objects (no kubelets, no
# scheduler: pods stay Pending). Measures the time from the Deployment's creation until all
# 1,000 pods exist, and the controller-manager's and API server's RSS at that point.
#
#   orchestrator/controllers/bench/deployment-1000.sh [path/to/trellis] [replicas] [nodes]
#
# Everything runs on loopback in a temporary directory; both daemons are stopped by PID.
set -euo pipefail
TRELLIS=${1:-target/release/trellis}
REPLICAS=${2:-1000}
NODES=${3:-100}
KUBECTL=${KUBECTL:-kubectl}
DIR=$(mktemp -d /tmp/trellis-cm-bench.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
cleanup() {
    for p in "${CM_PID:-}" "${API_PID:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-}" = 1 ]; then echo "logs kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
"$TRELLIS" apiserver --data-dir "$DIR/api" --listen "127.0.0.1:$PORT" >"$DIR/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 1 100); do [ -f "$DIR/api/admin.kubeconfig" ] && break; sleep 0.1; done
K="$KUBECTL --kubeconfig $DIR/api/admin.kubeconfig"
for _ in $(seq 1 100); do $K get ns default >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 0 $((NODES - 1))); do
    printf 'apiVersion: v1\nkind: Node\nmetadata:\n  name: fake-%d\n---\n' "$i"
done >"$DIR/nodes.yaml"
$K create -f "$DIR/nodes.yaml" >/dev/null
"$TRELLIS" controller-manager --kubeconfig "$DIR/api/admin.kubeconfig" --listen 127.0.0.1:0 \
    --leader-elect=false >"$DIR/cm.log" 2>&1 &
CM_PID=$!
sleep 1
START=$(date +%s.%N)
$K create deployment bench --image=registry.k8s.io/pause:3.10 --replicas="$REPLICAS" >/dev/null
while :; do
    N=$( ($K get pods -l app=bench --no-headers 2>>"$DIR/kubectl.err" || true) | wc -l)
    [ "$N" -ge "$REPLICAS" ] && break
    sleep 0.2
done
END=$(date +%s.%N)
rss() { awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$1/status"; }
echo "pods: $REPLICAS on $NODES fake nodes"
echo "time to all pods: $(echo "$END - $START" | bc) s"
echo "controller-manager RSS: $(rss $CM_PID)"
echo "apiserver RSS: $(rss $API_PID)"
