"""The report's latency per target: every model on every device bench.targets measured, side by side.

Models are compared and gated on signoff.latency_target; the other targets show what the same models do elsewhere
(a tuned setting, an int8 speed-up or a ranking seldom carries over from one CPU to another).
"""

from __future__ import annotations

from typing import Any

CPU = "CPUExecutionProvider"


def target_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows): per model, each target's p50 / p90 at the comparison batch on the CPU, its settings and
    peak memory there, and its test accuracy where the target computed one. None for a one-target report."""
    names = list(report.get("targets") or {})
    if len(names) < 2:
        return None
    batch = str(report["config"]["signoff"]["latency_batch"])
    header = ["model"] + [f"{short(name)}: p50 / p90 ms, settings" for name in names]
    with_accuracy = [
        n for n in names if any(m["targets"][n].get("test_accuracy") is not None for m in report["models"])
    ]
    header += [f"{short(name)}: test accuracy" for name in with_accuracy]
    rows = []
    for model in report["models"]:
        row = [model["name"]]
        for name in names:
            measured = model["targets"][name]
            stats = measured["latency"].get(CPU, {}).get(batch)
            memory = (measured.get("memory") or {}).get("peak_rss_mb")
            text = "not measured" if stats is None else f"{stats['p50_ms']:.4f} / {stats['p90_ms']:.4f}"
            row.append(f"{text}, {measured['settings_label']}" + ("" if memory is None else f", {memory} MB"))
        row += [f"{model['targets'][name]['test_accuracy']:.4f}" for name in with_accuracy]
        rows.append(row)
    return header, rows


def target_descriptions(report: dict[str, Any]) -> list[str]:
    """One line per target: what it is (CPU, board, ISA, cores, onnxruntime and its providers, Python)."""
    lines = []
    for name, env in (report.get("targets") or {}).items():
        board = f" on {env['board']}" if env.get("board") else ""
        lines.append(
            f"{name}: {env.get('cpu')}{board} ({env.get('machine')}; {' '.join(env.get('isa') or []) or 'no listed'}"
            f" ISA flags), {env.get('cores')} cores, onnxruntime {env.get('onnxruntime')} "
            f"({', '.join(env.get('providers') or [])}), python {env.get('python')}"
        )
    return lines


def short(name: str) -> str:
    """A target's name without its query (?python=...&cache=...), for table headers."""
    return name.split("?", 1)[0]
