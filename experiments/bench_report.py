"""The record of a bench_serving.py run: results.json (headline figures, ratios, targets), README.md, plot.png.

Everything here is derived from the per-system measurements in record["systems"]; a system that
was not run, was skipped or failed shows as n/a and its ratios as null.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "performance_serving"))
from judge.trace import TraceRequest  # noqa: E402

@dataclass(frozen=True)
class Target:
    name: str
    ratio: str          # key in ratios
    goal: str           # printed rule
    met: Callable[[float], bool]


TARGETS = (
    Target("tuned exec >= 10x lower than baseline", "baseline_over_tuned_exec", ">= 10", lambda r: r >= 10),
    Target("tuned output tok/s >= 3x HF", "tuned_over_hf_tokens_per_s", ">= 3", lambda r: r >= 3),
    Target("tuned exec <= llama.cpp's", "tuned_over_llamacpp_exec", "<= 1", lambda r: r <= 1),
    Target("tuned within 2x of the limit", "tuned_over_limit_exec", "<= 2", lambda r: r <= 2),
)


def new_record(args: argparse.Namespace, env: dict, trace: Sequence[TraceRequest]) -> dict:
    return {
        "work": os.path.relpath(args.work, os.getcwd()),
        "trace": {"requests": len(trace), "qps": args.qps, "dataset": args.dataset, "tokenizer": args.tokenizer,
                  "prompt_tokens": sum(r.input_tokens for r in trace),
                  "requested_output_tokens": sum(r.max_new_tokens for r in trace),
                  "longest_sequence": max(r.input_tokens + r.max_new_tokens for r in trace),
                  "last_arrival_s": trace[-1].send_at, "judge_warmup_requests": args.warmup},
        "environment": env,
        "systems_requested": list(args.systems),
        "others_cpu_share": {},      # per system, before and after: busy CPU share of other processes
        "systems": {},
    }


def _measured(systems: dict, name: str) -> Optional[dict]:
    s = systems.get(name)
    return s if s and "skipped" not in s and "error" not in s else None


def _get(d: Optional[dict], *keys: str) -> Optional[float]:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d  # type: ignore[return-value]


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def headline(record: dict) -> dict:
    s = record["systems"]
    base, tuned, llama, hf, lim = (_measured(s, n) for n in ("baseline", "tuned", "llamacpp", "hf", "limit"))
    h = {
        "baseline_exec_s": _get(base, "exec_time_s"),
        "tuned_exec_s": _get(tuned, "exec_time_s"),
        "llamacpp_exec_s": _get(llama, "exec_time_s"),
        "llamacpp_default_exec_s": _get(llama, "default_numerics", "exec_time_s"),
        "tuned_openai_exec_s": _get(tuned, "openai", "exec_time_s"),
        "hf_tokens_per_s": _get(hf, "tokens_per_s"),
        "tuned_tokens_per_s": _get(tuned, "output_throughput"),
        "limit_exec_s": _get(lim, "limit_exec_s"),
    }
    ratios = {
        "baseline_over_tuned_exec": _div(h["baseline_exec_s"], h["tuned_exec_s"]),
        "tuned_over_hf_tokens_per_s": _div(h["tuned_tokens_per_s"], h["hf_tokens_per_s"]),
        "tuned_over_llamacpp_exec": _div(h["tuned_exec_s"], h["llamacpp_exec_s"]),
        "tuned_over_llamacpp_default_exec": _div(h["tuned_exec_s"], h["llamacpp_default_exec_s"]),
        "tuned_over_limit_exec": _div(h["tuned_exec_s"], h["limit_exec_s"]),
        "tuned_openai_over_legacy_exec": _div(h["tuned_openai_exec_s"], h["tuned_exec_s"]),
        "llamacpp_over_limit_exec": _div(h["llamacpp_exec_s"], h["limit_exec_s"]),
    }
    targets = {t.name: {"ratio": t.ratio, "goal": t.goal, "value": ratios[t.ratio],
                        "met": None if ratios[t.ratio] is None else t.met(ratios[t.ratio])} for t in TARGETS}
    return {**h, "ratios": ratios, "targets": targets}


@dataclass(frozen=True)
class Row:
    system: str                     # the entry in record["systems"] it comes from
    label: str
    short: str                      # x-axis label of the plot
    exec_s: Optional[float]
    tokens_per_s: Optional[float]
    ttft: tuple[Optional[float], Optional[float]]
    tpot: tuple[Optional[float], Optional[float]]
    done: str


def _server_row(system: str, label: str, short: str, m: Optional[dict]) -> Optional[Row]:
    if m is None:
        return None
    return Row(system, label, short, m["exec_time_s"], m["output_throughput"], (m["ttft_ms"]["p50"], m["ttft_ms"]["p99"]),
               (m["tpot_ms"]["p50"], m["tpot_ms"]["p99"]), f"{m['completed']}/{m['failed']}")


def rows(record: dict) -> list[Row]:
    s = record["systems"]
    tuned, llama, hf, lim = (_measured(s, n) for n in ("tuned", "llamacpp", "hf", "limit"))
    out = [
        _server_row("baseline", "baseline: our kit, contest policy (legacy)", "baseline", _measured(s, "baseline")),
        _server_row("tuned", "tuned: our kit (legacy)", "tuned", tuned),
        _server_row("tuned", "tuned: our kit (openai route)", "tuned\n(openai)", _get(tuned, "openai")),
        _server_row("llamacpp", "llama.cpp, exact (-fa off, f32 KV)", "llama.cpp\nexact", llama),
        _server_row("llamacpp", "llama.cpp, default numerics", "llama.cpp\ndefaults", _get(llama, "default_numerics")),
    ]
    if hf:
        out.append(Row("hf", f"HF transformers, static batch {hf['batch_size']}", f"HF static\nbatch {hf['batch_size']}",
                       hf["wall_s"], hf["tokens_per_s"],
                       (None, None), (None, None), f"{hf['requests']}/0"))
    if lim:
        tokens = lim["cost"]["output_tokens"]
        out.append(Row("limit", "physical limit (lower bound)", "limit", lim["limit_exec_s"], tokens / lim["limit_exec_s"],
                       (None, None), (None, None), "-"))
    return [r for r in out if r is not None]


def _share(load: Optional[dict]) -> str:
    if not load:
        return "n/a"
    after = load.get("after")
    return f"{100 * load['before']:.0f} % / " + ("n/a" if after is None else f"{100 * after:.0f} %")


def not_measured(record: dict) -> dict[str, str]:
    """Why each requested system has no figures: skipped, failed or not run (interrupted)."""
    out = {}
    for name in record["systems_requested"]:
        s = record["systems"].get(name)
        if s is None:
            out[name] = "not run (interrupted or still to come)"
        elif "skipped" in s:
            out[name] = f"skipped: {s['skipped']}"
        elif "error" in s:
            out[name] = f"failed: {s['error']}"
    return out


def _f(v: Optional[float], fmt: str = ".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def summary_text(record: dict) -> str:
    lines = [f"{'system':46s} {'exec s':>9s} {'out tok/s':>10s} {'TTFT p50/p99 ms':>18s} {'TPOT p50/p99 ms':>16s}"]
    for r in rows(record):
        lines.append(f"{r.label:46s} {_f(r.exec_s):>9s} {_f(r.tokens_per_s):>10s} "
                     f"{_f(r.ttft[0], '.0f') + '/' + _f(r.ttft[1], '.0f'):>18s} "
                     f"{_f(r.tpot[0]) + '/' + _f(r.tpot[1]):>16s}")
    for name, why in not_measured(record).items():
        lines.append(f"{name}: {why}")
    for name, t in headline(record)["targets"].items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"target {name} ({t['goal']}): {_f(t['value'], '.2f')} -> {verdict}")
    return "\n".join(lines)


def _log_scale(ax, values: Sequence[Optional[float]]) -> None:
    """Log y axis whose floor sits well below the smallest bar, so bar heights stay comparable."""
    positive = [v for v in values if v]
    if positive:
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(positive) / 10)


def plot(record: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(record)
    if not data:
        return
    labels = [r.short for r in data]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    colors = ["#c44e52" if "baseline" in r.label else "#4c72b0" if "tuned" in r.label else
              "#55a868" if "llama" in r.label else "#8172b2" if "HF" in r.label else "#777777" for r in data]
    for ax, values, title, log in ((axes[0, 0], [r.exec_s for r in data], "exec time (s, log scale; lower is better)", True),
                                   (axes[0, 1], [r.tokens_per_s for r in data], "output tokens/s (higher is better)", False)):
        v = [x or 0 for x in values]
        bars = ax.bar(range(len(data)), v, color=colors)
        ax.bar_label(bars, [_f(x) for x in values], fontsize=8)
        ax.set_xticks(range(len(data)), labels, fontsize=8)
        ax.set_title(title)
        if log and any(v):
            _log_scale(ax, v)
    served = [(label, r) for label, r in zip(labels, data) if r.ttft[0] is not None]
    for ax, key, title in ((axes[1, 0], "ttft", "TTFT (ms)"), (axes[1, 1], "tpot", "TPOT (ms)")):
        x = range(len(served))
        for offset, i, name in ((-0.2, 0, "p50"), (0.2, 1, "p99")):
            vals = [getattr(r, key)[i] or 0 for _, r in served]
            bars = ax.bar([k + offset for k in x], vals, width=0.4, label=name)
            ax.bar_label(bars, [_f(v, ".0f") for v in vals], fontsize=8)
        ax.set_xticks(list(x), [label for label, _ in served], fontsize=8)
        _log_scale(ax, [v for _, r in served for v in getattr(r, key)])
        ax.set_title(title + ", log scale")
        ax.legend()
    t = record["trace"]
    fig.suptitle(f"{t['requests']} requests ({os.path.basename(t['dataset'])}), X={t['qps']}, "
                 f"{record['environment']['nproc']} cores: {record['environment']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PHASES = ("schedule", "prepare", "submit", "wait", "model", "update", "detokenize")


def _profile_lines(system: str, m: Optional[dict]) -> list[str]:
    """A table of where our engine's step time went (legacy run, from the server's /metrics)."""
    prof = (m or {}).get("engine_profile")
    if not prof:
        return []
    lines = ["", f"## Engine step profile: {system}", "",
             "Mean ms per engine step by phase (`llm_engine_phase_seconds_total` / `llm_engine_steps_total`, "
             "warm-up requests included). `model` is the agent's own time for the step (forward pass and greedy "
             "sampling); `wait` is the engine thread waiting for the answer (shared memory + TCP + the model "
             "minus what overlapped with `detokenize`, which runs while the agent computes); the other phases "
             "are host work on the engine thread. `engine s` = the sum of all phases but `model`.", "",
             "| step kind | steps | tokens/step | engine s | " + " | ".join(PHASES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(PHASES)]
    for kind, p in sorted(prof.items()):
        n = max(p["steps"], 1)
        host = sum(v for k, v in p["phase_s"].items() if k != "model")
        lines.append(f"| {kind} | {p['steps']} | {p['tokens'] / n:.1f} | {host:.1f} | "
                     + " | ".join(f"{1e3 * p['phase_s'].get(ph, 0.0) / n:.2f}" for ph in PHASES) + " |")
    return lines


def readme(record: dict) -> str:
    h, t, env = headline(record), record["trace"], record["environment"]
    s = record["systems"]
    lines = [
        "# Serving peers: our kit (baseline and tuned) vs llama.cpp vs HF transformers vs the physical limit",
        "",
        "Written by `experiments/bench_serving.py` (regenerated on every run; do not edit by hand)."
        + (" Later commands measured again, with `--keep-quiet`, the systems that earlier ones had measured while "
           "other processes loaded the CPU; quiet figures were kept." if "\n" in record.get("command", "") else ""),
        "",
        *("    " + line for line in record.get("command", "").splitlines()),
        "",
        f"Machine: {env['nproc']} cores, {env['cpu']}, {env['memory_gib']} GiB; Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
        + (f"; llama-server {env['llama_server']}" if env.get("llama_server") else "")
        + f"; commit {env['git_commit'][:10]}{' (with uncommitted changes)' if env['git_tracked_changes'] else ''}"
        + f"; {env['date']}.",
        "",
        f"Trace: the judge's first {t['requests']} records of `{os.path.basename(t['dataset'])}` "
        f"(tokenizer `{os.path.basename(t['tokenizer'])}`), {t['prompt_tokens']} prompt tokens (BOS included) and "
        f"{t['requested_output_tokens']} requested output tokens, longest sequence {t['longest_sequence']} tokens, "
        f"Poisson arrivals at X={t['qps']} (last at {t['last_arrival_s']:.1f} s), {t['judge_warmup_requests']} "
        "untimed warm-up requests per server. Model: `predict_llama2_bench.yaml` (hidden 512, 8 layers, "
        "8 heads, FFN 1376, vocab 32000, 58 M parameters, fp32, random weights), the same weights for every system.",
        "",
        "| system | exec time (s) | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | completed / failed "
        "| other processes' CPU before / after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    load = record["others_cpu_share"]
    for r in rows(record):
        lines.append(f"| {r.label} | {_f(r.exec_s)} | {_f(r.tokens_per_s)} | {_f(r.ttft[0], '.0f')} / "
                     f"{_f(r.ttft[1], '.0f')} | {_f(r.tpot[0])} / {_f(r.tpot[1])} | {r.done} | {_share(load.get(r.system))} |")
    for name, why in not_measured(record).items():
        lines.append(f"| {name} | {why} | | | | | |")
    if load:
        lines += ["", "The last column is the busy CPU share of other processes sampled for 2 s just before and just "
                  "after each system, while this benchmark ran nothing: the machine has 2 cores, so more than a few % "
                  "means that system's figures are worse than this machine can do."]
    lines += ["", "![exec time, output tok/s, TTFT and TPOT per system](plot.png)", "",
              "## Targets", "", "| target | ratio | value | met |", "|---|---|---:|---|"]
    for name, tg in h["targets"].items():
        lines.append(f"| {name} | `{tg['ratio']}` {tg['goal']} | {_f(tg['value'], '.2f')} | "
                     f"{'n/a' if tg['met'] is None else 'yes' if tg['met'] else 'no'} |")
    other = {k: v for k, v in h["ratios"].items() if k not in {tg.ratio for tg in TARGETS}}
    lines += ["", "Other ratios: " + ", ".join(f"`{k}` {_f(v, '.2f')}" for k, v in other.items()) + "."]
    for system in ("baseline", "tuned"):
        lines += _profile_lines(system, _measured(s, system))
    llama = _measured(s, "llamacpp")
    if llama:
        lines += ["", "## llama.cpp", ""]
        for label, m in (("exact", llama), ("default numerics", llama["default_numerics"])):
            a = m["reference_agreement"]
            lines.append(f"- {label}: `llama-server {' '.join(m['flags'])}`; greedy tokens vs the float64 reference "
                         f"(`msllama.reference`) on the first {a['prompts']} prompts: {a['tokens_matched']}/"
                         f"{a['tokens_compared']} tokens match ({a['identical_prompts']} prompts identical); "
                         f"{m['tokenization_mismatches']}/{t['requests']} trace prompts tokenized differently "
                         f"from our server; judged through `/v1/completions` (openai backend).")
    hf = _measured(s, "hf")
    if hf:
        a = hf["reference_agreement"]
        lines += ["", "## HF transformers", "",
                  f"Static batches of {hf['batch_size']} in trace order, left padding, greedy, max_new_tokens = the "
                  f"batch's largest request, torch threads {hf['threads']}, prompts tokenized by our tokenizer. "
                  f"Wall {hf['wall_s']:.1f} s for {hf['requests']} requests; useful tokens (each request's own "
                  f"length, up to its first EOS) {hf['useful_tokens']} of {hf['requested_tokens']} requested: "
                  f"{hf['tokens_per_s']:.1f} tok/s ({hf['requested_tokens_per_s']:.1f} counting requested lengths). "
                  f"Decode slots computed {hf['decode_slots']}, wasted {hf['wasted_decode_slots']} "
                  f"({100 * hf['wasted_decode_slots'] / max(hf['decode_slots'], 1):.0f} %); prompt padding "
                  f"{hf['wasted_prompt_slots']} of {hf['padded_prompt_slots']} prompt slots. Greedy tokens vs the "
                  f"float64 reference on the first {a['prompts']} prompts: {a['tokens_matched']}/{a['tokens_compared']}."]
    lim = _measured(s, "limit")
    if lim:
        c, pk = lim["cost"], lim["peak"]
        lines += ["", "## Physical limit (`experiments/physical_limit.py`)", "",
                  f"Peak fp32 GEMM {pk['flops'] / 1e9:.1f} GFLOP/s ({pk['flops_how']}), bandwidth "
                  f"{pk['bandwidth'] / 1e9:.1f} GB/s ({pk['bandwidth_how']}). Trace: {c['flops'] / 1e12:.3f} TFLOP "
                  f"(linear {c['flops_linear'] / 1e12:.3f}, LM head {c['flops_lm_head'] / 1e12:.3f}, attention "
                  f"{c['flops_attention'] / 1e12:.3f}) -> {lim['compute_s']:.2f} s; {c['bytes'] / 1e9:.1f} GB "
                  f"(weights {c['weight_bytes'] / 1e6:.0f} MB x {c['weight_passes']} steps, KV reads "
                  f"{c['kv_read_bytes'] / 1e9:.2f} GB) -> {lim['memory_s']:.2f} s. "
                  f"limit_exec_s = {lim['limit_exec_s']:.2f} s ({lim['bound_by']}-bound).",
                  "", "All rates measured:", ""]
        lines += [f"- {k}: {v / 1e9:.1f} {'GFLOP/s' if k.startswith('gemm') else 'GB/s'}"
                  for k, v in pk["measurements"].items()]
        lines += ["", "Assumptions:", ""] + [f"- {a}" for a in lim["assumptions"]]
    lines += ["", "## Files", "",
              "`results.json` (headline keys, ratios, targets, every system's metrics), `environment.json`, "
              "`command.txt`, the configs `experiments/configs/llama_bench_{baseline,tuned}.yaml`. Server logs "
              f"and the judge's per-request outputs stayed in `{record['work']}` (not committed).", ""]
    return "\n".join(lines)


def save(record: dict, out: str) -> None:
    """results.json always; README.md and plot.png too (cheap, and a partial run stays readable)."""
    with open(os.path.join(out, "command.txt")) as f:
        record["command"] = f.read().strip()
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({**headline(record), **record, "not_measured": not_measured(record)}, f, indent=2)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(record))
    plot(record, os.path.join(out, "plot.png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="re-render README.md and plot.png of a bench_serving.py results folder")
    p.add_argument("folder", help="a folder holding results.json")
    args = p.parse_args(argv)
    path = os.path.join(args.folder, "results.json")
    if not os.path.isfile(path):
        print(f"error: {path}: not found", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    with open(os.path.join(args.folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(record))
    plot(record, os.path.join(args.folder, "plot.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
