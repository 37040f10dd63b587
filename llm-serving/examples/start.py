"""Start the server (see llm_serving.launcher for flags, output and exit codes).

    cd llm-serving && python examples/start.py --task 1 --config configs/llama/llama_7b_kbk_pa_dyn_debug.yaml
"""
from __future__ import annotations

import os
import sys

_SERVING = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Works without the virtual environment's .pth file: both packages of the kit sit beside this folder.
for _path in (os.path.join(os.path.dirname(_SERVING), "mindformers"), _SERVING):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from llm_serving.launcher import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
