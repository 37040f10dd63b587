#!/usr/bin/env bash
# ./run.sh          the main job: CPU debug end-to-end (server, judge task 1 and 2, precision, report)
# ./run.sh test     the test suite (pytest arguments may follow)
# Both set everything up first (init.sh, idempotent).
set -euo pipefail
cd "$(dirname "$0")"
./init.sh
case "${1:-}" in
  test)
    shift
    exec .venv/bin/python -m pytest tests "$@"
    ;;
  *)
    exec .venv/bin/python performance_serving/main_job.py "$@"
    ;;
esac
