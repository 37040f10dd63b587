"""How many of a served run's decode rows were its buckets' padding: the judge's per-request token
times (`result_*.json`: start, first_token_time, itl) grouped into engine steps (tokens less than
3 ms apart), each step's size padded to the smallest decode bucket of the serving config.

    .venv/bin/python experiments/2026-12-04-padded-rows/padding_share.py out/<run>/tuned/result_100.0_x.json experiments/configs/llama_bench_tuned.yaml
"""
import json
import sys

import numpy as np
import yaml


def step_sizes(results: list[dict]) -> np.ndarray:
    times = []
    for r in results:
        t = r["start"] + r["first_token_time"]
        for gap in r["itl"]:
            t += gap
            times.append(t)
    times.sort()
    sizes, size = [], 1
    for a, b in zip(times, times[1:]):
        if b - a < 0.003:
            size += 1
        else:
            sizes.append(size)
            size = 1
    sizes.append(size)
    return np.array(sizes)


def main() -> int:
    with open(sys.argv[1]) as f:
        sizes = step_sizes(json.load(f))
    with open(sys.argv[2]) as f:
        buckets = sorted(yaml.safe_load(f)["model_config"]["decode_batch_size"])
    padded = np.array([min(b for b in buckets if b >= s) for s in sizes])
    print(f"{len(sizes)} decode steps, {sizes.sum()} real rows, {padded.sum()} bucket rows: "
          f"{100 * (1 - sizes.sum() / padded.sum()):.1f} % padding")
    big = sizes > 16
    print(f"steps of more than 16 rows: {big.sum()}, {100 * (1 - sizes[big].sum() / padded[big].sum()):.1f} % padding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
