#!/bin/bash
# One served run of the bench trace (N=300, X=100, as ../2026-11-22-serving-peers/ANALYSIS.md) from
# the tree TREE, its exec time appended to OUT (and, with METRICS=PREFIX set, the server's /metrics
# after the run saved to PREFIX-LABEL-<time>.txt). Alternate two trees for an A/B, e.g.
#   git worktree add /tmp/old <rev>; mkdir -p /tmp/old/.cache
#   for d in bench compile debug; do ln -sfn "$PWD/.cache/$d" /tmp/old/.cache/$d; done
#   for i in 1 2 3; do experiments/2026-12-01-fused-ops/serve_ab.sh /tmp/old old /tmp/ab.txt
#                      experiments/2026-12-01-fused-ops/serve_ab.sh "$PWD" new /tmp/ab.txt; done
set -euo pipefail
TREE=$(cd "$1" && pwd); LABEL=$2; OUT=$(realpath "$3"); CONFIG=${4:-experiments/configs/llama_bench_tuned.yaml}
PY=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python
JUDGE=$(cd "$(dirname "$0")/../.." && pwd)/performance_serving
PORT=8871
source "$(dirname "$0")/../bench_server.sh"
start_bench_server "$TREE" "$CONFIG" $PORT "/tmp/serve_ab-$LABEL.log"
cd "$(mktemp -d)"
EXEC=$("$PY" "$JUDGE/test_serving_performance.py" "${BENCH_JUDGE_ARGS[@]}" -P $PORT \
       | sed -n 's/.*Exec Time is \([0-9.]*\).*/\1/p')
echo "$LABEL $EXEC" | tee -a "$OUT"
if [ -n "${METRICS:-}" ]; then curl -s "127.0.0.1:$PORT/metrics" > "$METRICS-$LABEL-$(date +%s).txt"; fi
