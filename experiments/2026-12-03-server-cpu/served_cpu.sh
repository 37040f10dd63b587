#!/bin/bash
# One served run of the bench trace from the tree TREE, with the CPU seconds each process and
# agent thread spent while the judge ran, appended to OUT as one line (the judge and the .venv are
# this tree's, as ../2026-12-01-fused-ops/serve_ab.sh). With HIDE set (e.g. HIDE="uvloop httptools")
# those modules cannot be imported by the server and its agent, so uvicorn falls back to asyncio and
# h11 as before they were dependencies. With METRICS=PREFIX the server's /metrics after the run go
# to PREFIX-LABEL-<time>.txt and the judge's summary to .json. EXTRA_PYTHONPATH (a folder) goes
# first on the server's module path (../bench_server.sh). A/B of two trees:
#   git worktree add /tmp/old <rev>; mkdir -p /tmp/old/.cache
#   for d in bench compile debug; do ln -sfn "$PWD/.cache/$d" /tmp/old/.cache/$d; done
#   for i in 1 2 3 4; do METRICS=/tmp/m experiments/2026-12-03-server-cpu/served_cpu.sh /tmp/old old /tmp/cpu.txt
#                        METRICS=/tmp/m experiments/2026-12-03-server-cpu/served_cpu.sh "$PWD" new /tmp/cpu.txt; done
# A/B of the modules in this tree: HIDE="uvloop httptools" ... "$PWD" old ..., then ... "$PWD" new ...
set -euo pipefail
TREE=$(cd "$1" && pwd); LABEL=$2; OUT=$(realpath "$3"); CONFIG=${4:-experiments/configs/llama_bench_tuned.yaml}
cd "$(dirname "$0")/../.."
ROOT=$PWD; PORT=8871
if [ -n "${HIDE:-}" ]; then
  EXTRA_PYTHONPATH=$(mktemp -d)
  for m in $HIDE; do echo "raise ImportError('hidden by served_cpu.sh')" > "$EXTRA_PYTHONPATH/$m.py"; done
  export EXTRA_PYTHONPATH
fi
source experiments/bench_server.sh
start_bench_server "$TREE" "$CONFIG" $PORT "/tmp/served_cpu-$LABEL.log"
AGENT=$(pgrep -f "llm_serving.agent.*--config $TREE/$CONFIG" | head -1)
# utime + stime (clock ticks) of every thread of the server and its agent, by "pid comm"
ticks() { for p in $SERVER $AGENT; do for t in /proc/$p/task/*; do
  echo "$([ $p = $SERVER ] && echo server || echo agent):$(tr ' ' _ < $t/comm) $(sed 's/.*) //' $t/stat | cut -d' ' -f12,13)"
done; done; }
BEFORE=$(ticks)
JDIR=$(mktemp -d)
JUDGE_OUT=$(cd "$JDIR" && /usr/bin/time -f "judge_cpu_s %U %S" "$ROOT/.venv/bin/python" \
            "$ROOT/performance_serving/test_serving_performance.py" "${BENCH_JUDGE_ARGS[@]}" -P $PORT 2>&1)
AFTER=$(ticks)
if [ -n "${METRICS:-}" ]; then
  STAMP=$(date +%s); curl -s "127.0.0.1:$PORT/metrics" > "$METRICS-$LABEL-$STAMP.txt"
  cp "$JDIR/summary_100.0_x.json" "$METRICS-$LABEL-$STAMP.json"
fi
EXEC=$(sed -n 's/.*Exec Time is \([0-9.]*\).*/\1/p' <<< "$JUDGE_OUT")
JUDGE=$(awk '/^judge_cpu_s/ {printf "%.2f", $2 + $3}' <<< "$JUDGE_OUT")
CPU=$(python3 - "$(getconf CLK_TCK)" "$BEFORE" "$AFTER" <<'PY'
import collections, sys
hz = int(sys.argv[1])
def load(text):
    d = collections.Counter()
    for line in text.splitlines():
        key, u, s = line.split()
        d[key] += int(u) + int(s)
    return d
a, b = load(sys.argv[2]), load(sys.argv[3])
server = sum(b[k] - a[k] for k in b if k.startswith("server:")) / hz
agent = {k.split(":", 1)[1]: (b[k] - a[k]) / hz for k in b if k.startswith("agent:")}
print(f"server {server:.2f} agent {sum(agent.values()):.2f} ("
      + " ".join(f"{k} {v:.2f}" for k, v in sorted(agent.items(), key=lambda kv: -kv[1]) if v >= 0.05) + ")")
PY
)
echo "$LABEL exec $EXEC judge $JUDGE $CPU" | tee -a "$OUT"
