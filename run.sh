#!/usr/bin/env bash
# ./run.sh          the main job: CPU debug end-to-end (server, judge task 1 and 2, precision, report)
# ./run.sh test     the test suite (pytest arguments may follow)
# Both set everything up first (init.sh, idempotent). The main job runs in the caller's folder, so
# relative paths in its flags (--dataset, --tokenizer, --config, --out) mean what the user typed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/init.sh"
case "${1:-}" in
  test)
    shift
    cd "$HERE"
    exec .venv/bin/python -m pytest tests "$@"
    ;;
  *)
    exec "$HERE/.venv/bin/python" "$HERE/performance_serving/main_job.py" "$@"
    ;;
esac
