"""Metrics: engine-side updates come back out of the Prometheus text exposition."""
from __future__ import annotations

import math
import re
import threading

import pytest

from llm_serving.metrics import TTFT_BUCKETS, Histogram, Metrics

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """A strict reader of the text format: {family: type}, {(name, labels): value}."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps and name not in types, line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"malformed sample line {line!r}"
            name, labels, value = m.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types, f"{name} has no TYPE line before it"
            key = (name, tuple(LABEL.findall(labels or "")))
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = math.inf if value == "+Inf" else float(value)
    return types, samples


def histogram(samples: dict, name: str) -> tuple[list[tuple[float, float]], float, float]:
    buckets = sorted((math.inf if dict(lbl)["le"] == "+Inf" else float(dict(lbl)["le"]), v)
                     for (n, lbl), v in samples.items() if n == f"{name}_bucket")
    return buckets, samples[(f"{name}_sum", ())], samples[(f"{name}_count", ())]


def test_fresh_metrics_render_every_family_at_zero():
    types, samples = parse(Metrics().render())
    assert types["llm_requests_waiting"] == "gauge"
    assert types["llm_prompt_tokens_total"] == "counter"
    assert types["llm_time_to_first_token_seconds"] == "histogram"
    for name in ("llm_requests_waiting", "llm_requests_running", "llm_kv_blocks_used", "llm_kv_blocks_total",
                 "llm_prompt_tokens_total", "llm_generation_tokens_total", "llm_preemptions_total",
                 "llm_prefix_cache_queried_tokens_total", "llm_prefix_cache_hit_tokens_total"):
        assert samples[(name, ())] == 0
    buckets, total, count = histogram(samples, "llm_e2e_request_latency_seconds")
    assert buckets[-1] == (math.inf, 0) and total == 0 and count == 0


def test_engine_updates_come_back_out():
    m = Metrics()
    for n in (5, 7, 20):
        m.on_arrival(n)
    ttfts = [0.003, 0.01, 0.7, 1000.0]      # 0.01 sits exactly on a bound: counted in it (le)
    for t in ttfts:
        m.on_first_token(t)
    for gap in (0.02, 0.03, 0.04):
        m.on_token(gap)
    m.on_finish(1.5, 12, "eos")
    m.on_finish(2.5, 30, "length")
    m.on_finish(0.1, 0, "error")
    m.on_finish(3.0, 4, "eos")
    m.on_prefix_cache(64, 48)
    m.on_prefix_cache(16, 0)
    m.on_preemption()
    m.on_preemption()
    m.set_gauges(waiting=3, running=9, kv_used=40, kv_total=319)
    types, s = parse(m.render())

    assert s[("llm_prompt_tokens_total", ())] == 32
    assert s[("llm_requests_received_total", ())] == 3
    assert s[("llm_generation_tokens_total", ())] == 46
    assert s[("llm_requests_finished_total", (("reason", "eos"),))] == 2
    assert s[("llm_requests_finished_total", (("reason", "length"),))] == 1
    assert s[("llm_requests_finished_total", (("reason", "error"),))] == 1
    assert s[("llm_prefix_cache_queried_tokens_total", ())] == 80
    assert s[("llm_prefix_cache_hit_tokens_total", ())] == 48
    assert s[("llm_preemptions_total", ())] == 2
    assert [s[(n, ())] for n in ("llm_requests_waiting", "llm_requests_running", "llm_kv_blocks_used",
                                  "llm_kv_blocks_total")] == [3, 9, 40, 319]

    buckets, total, count = histogram(s, "llm_time_to_first_token_seconds")
    assert [b for b, _ in buckets] == [*TTFT_BUCKETS, math.inf]
    for bound, cumulative in buckets:       # cumulative: observations <= bound
        assert cumulative == sum(t <= bound for t in ttfts), bound
    assert count == 4 and total == pytest.approx(sum(ttfts))
    _, total, count = histogram(s, "llm_time_per_output_token_seconds")
    assert count == 3 and total == pytest.approx(0.09)
    _, total, count = histogram(s, "llm_e2e_request_latency_seconds")
    assert count == 4 and total == pytest.approx(7.1)


def test_label_values_are_escaped():
    m = Metrics()
    m.on_finish(1.0, 1, 'we"ird\\reason\n')
    _, samples = parse(m.render())
    assert samples[("llm_requests_finished_total", (("reason", 'we\\"ird\\\\reason\\n'),))] == 1


def test_concurrent_updates_are_not_lost():
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.on_arrival(1)
            m.on_token(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, s = parse(m.render())
    assert s[("llm_prompt_tokens_total", ())] == 8000
    assert s[("llm_time_per_output_token_seconds_count", ())] == 8000


def test_histogram_bounds_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((0.1, 0.1, 0.2))
