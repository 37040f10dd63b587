# Sourced by the served A/B scripts: start_bench_server TREE CONFIG PORT LOG starts TREE's server
# in the background (its pid in $SERVER, stopped with SIGINT on exit) and waits for /health.
# EXTRA_PYTHONPATH, if set, goes first on the server's module path. BENCH_JUDGE_ARGS: the judge's
# arguments for the bench trace (N=300, X=100, as ../2026-11-22-serving-peers/ANALYSIS.md) but -P.
BENCH_JUDGE_ARGS=(-X 100 -T 3 --num-requests 300 --warmup 2)
start_bench_server() {
  local tree=$1 config=$2 port=$3 log=$4
  local py; py=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python
  (cd "$tree" && PYTHONPATH=${EXTRA_PYTHONPATH:+$EXTRA_PYTHONPATH:}$tree/mindformers:$tree/llm-serving exec "$py" llm-serving/examples/start.py \
      --task 1 --config "$config" --port "$port") > "$log" 2>&1 &
  SERVER=$!
  trap 'kill -INT $SERVER 2>/dev/null || true; wait $SERVER || true' EXIT
  for _ in $(seq 1 200); do
    curl -s "127.0.0.1:$port/health" > /dev/null && return 0
    kill -0 $SERVER 2> /dev/null || { echo "server failed, see $log" >&2; exit 1; }
    sleep 3
  done
  echo "server not healthy after 600 s, see $log" >&2; exit 1
}
