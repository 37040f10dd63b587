"""One PNG per run: CDFs of TTFT, TPOT and E2E latency, and output tokens/s over time."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: the judge runs on headless servers

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import numpy as np  # noqa: E402

from .client import RequestRecord  # noqa: E402


def token_timeline(records: Sequence[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times (s from run start) of token-carrying chunks and the tokens each carries.

    Chunk times are rebuilt from start + first_token_time + cumulative ITL; when a server packs
    several tokens in one chunk, the request's token count is spread evenly over its chunks.
    """
    times, weights = [], []
    for r in records:
        if r.first_token_time is None or r.output_tokens == 0:
            continue
        chunk_times = r.start + r.first_token_time + np.concatenate([[0.0], np.cumsum(r.itl)])
        times.append(chunk_times)
        weights.append(np.full(len(chunk_times), r.output_tokens / len(chunk_times)))
    if not times:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(times), np.concatenate(weights)


def _cdf(ax: plt.Axes, values_ms: Sequence[float], title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    if len(values_ms) == 0:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        return
    xs = np.sort(np.asarray(values_ms))
    ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post")


def plot_run(records: Sequence[RequestRecord], path: str | Path, title: str = "") -> None:
    done = [r for r in records if r.ok and r.first_token_time is not None]
    tpot = [r.tpot * 1000 for r in done if r.tpot is not None]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _cdf(axes[0, 0], [r.first_token_time * 1000 for r in done], "TTFT CDF")
    _cdf(axes[0, 1], tpot, "TPOT CDF")
    _cdf(axes[1, 0], [r.res_time * 1000 for r in done], "E2E latency CDF")
    ax = axes[1, 1]
    times, weights = token_timeline([r for r in records if r.ok])
    if len(times):
        edges = np.arange(0.0, np.floor(times.max()) + 2.0)  # 1 s bins from the run start
        counts, _ = np.histogram(times, bins=edges, weights=weights)
        ax.stairs(counts, edges)
    ax.set_title("output tokens/s (1 s bins)")
    ax.set_xlabel("s since run start")
    ax.set_ylabel("tokens/s")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
