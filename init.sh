#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned dependencies, the kit's packages on its path, and the
# debug assets (tokenizer, stand-in datasets, tiny model) in .cache/debug/. A second run with
# nothing changed takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD

pick_python() {
  for py in "${PYTHON:-}" python3.11 python3.10 python3.9 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))'; then
      echo "$py"; return 0
    fi
  done
  echo "init.sh: need Python 3.9-3.11 (MindSpore 2.10 wheels); set PYTHON=/path/to/python" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  echo "[init] creating .venv with $($py --version)"
  "$py" -m venv .venv
fi

# The lock was resolved on Python 3.11; other versions install the direct pins and let pip
# resolve the rest.
if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  reqs=requirements.lock
else
  reqs=requirements.txt
fi
stamp=.venv/.installed-$(sha256sum "$reqs" | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[init] installing dependencies from $reqs (MindSpore is ~800 MB: a minute or two)"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$reqs"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$root/mindformers" "$root/llm-serving" > "$site/llama_kit.pth"

.venv/bin/python -m msllama.assets | sed 's/^/[init] /'
