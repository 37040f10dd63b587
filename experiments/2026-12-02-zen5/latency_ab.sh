#!/bin/bash
# Single-stream latency of the tree TREE: the bench server (tuned config) under a light load,
# 8 requests at X=0.25 (mostly one in flight: decode batch 1), TPOT median and mean appended to
# OUT. Alternate two trees for an A/B (worktree set-up as ../2026-12-01-fused-ops/serve_ab.sh):
#   for i in 1 2 3; do experiments/2026-12-02-zen5/latency_ab.sh /tmp/old old /tmp/lat.txt
#                      experiments/2026-12-02-zen5/latency_ab.sh "$PWD" new /tmp/lat.txt; done
set -euo pipefail
TREE=$(cd "$1" && pwd); LABEL=$2; OUT=$(realpath "$3")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PORT=8872
source "$ROOT/experiments/bench_server.sh"
start_bench_server "$TREE" experiments/configs/llama_bench_tuned.yaml $PORT "/tmp/latency_ab-$LABEL.log"
cd "$(mktemp -d)"
"$ROOT/.venv/bin/python" "$ROOT/performance_serving/test_serving_performance.py" -X 0.25 --num-requests 8 -P $PORT \
    --warmup 1 > judge.txt
TPOT=$(awk '/-- TPOT/ {t = 1; next} /^-/ {t = 0} t && /^(median|mean):/ {printf "%s %s ", $1, $2}' judge.txt)
echo "$LABEL $TPOT" | tee -a "$OUT"
