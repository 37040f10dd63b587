#!/bin/bash
# Judges of two trees alternated against one server of this tree (bench trace, N=300, X=100):
# per run the exec time and the judge process's whole CPU time (user + sys, from GNU time).
#   git worktree add /tmp/oldjudge <rev>; mkdir -p /tmp/oldjudge/.cache
#   ln -sfn "$PWD/.cache/debug" /tmp/oldjudge/.cache/debug
#   experiments/2026-12-02-lean-judge/judge_ab.sh /tmp/oldjudge "$PWD" out.txt 4
set -euo pipefail
OLD=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); OUT=$(realpath "$3"); ROUNDS=${4:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd); PY=$ROOT/.venv/bin/python; PORT=8871
source "$ROOT/experiments/bench_server.sh"
start_bench_server "$ROOT" experiments/configs/llama_bench_tuned.yaml $PORT /tmp/judge_ab-server.log
echo "# judge exec_s judge_cpu_s(user+sys, whole process) completed" >> "$OUT"
for _ in $(seq 1 "$ROUNDS"); do
  for label in old new; do
    TREE=$OLD; [ $label = new ] && TREE=$NEW
    cd "$(mktemp -d)"
    /usr/bin/time -f "cpu %U %S" -o time.txt "$PY" "$TREE/performance_serving/test_serving_performance.py" \
        -X 100 -T 3 --num-requests 300 -P $PORT --warmup 2 > judge.out 2>&1
    EXEC=$(sed -n 's/.*Exec Time is \([0-9.]*\).*/\1/p' judge.out)
    CPU=$(awk '/^cpu/ {printf "%.2f", $2 + $3}' time.txt)
    echo "$label $EXEC $CPU $(awk '/Successful requests/ {print $NF}' judge.out)" | tee -a "$OUT"
  done
done
