"""A self-contained HTML page of a sign-off report (report.json): verdict, tables and plots in one file.

Nothing is fetched when the page is opened: the CSS is inline, fonts are the system's, and every plot is an
SVG drawn by matplotlib (text as paths) and embedded in the page. Every string taken from the report goes
through `html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pipeline.reporting import plots
from pipeline.reporting.alternatives_section import alternatives_section, pruned_is_alternative
from pipeline.reporting.html_figures import (
    caption_distributions,
    caption_pareto,
    escape,
    figure,
    per_class_section,
    search_trace_section,
    table_rows,
    training_section,
)
from pipeline.reporting.html_figures import table as _table
from pipeline.reporting.html_search import depth_section, remeasured_section, uniform_baseline_section
from pipeline.reporting.markdown import onnx_teacher_sentence, student_run
from pipeline.reporting.plots import PROVIDER, STATS, latency_at
from pipeline.reporting.search_sections import QUANTIZATION_AWARE_HEADER, quantization_aware_rows
from pipeline.reporting.signoff_section import HEADER as FAILING_HEADER
from pipeline.reporting.signoff_section import INTRO as FAILING_INTRO
from pipeline.reporting.signoff_section import budget_hint, failing_rows, gate_number
from pipeline.reporting.targets_section import target_descriptions, target_rows
from pipeline.reporting.timed_again import timed_again_section
from pipeline.reporting.timing_moved import held_text, moved_text

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1150px; padding: 1em 1.5em 3em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0.3em 0; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.verdict { padding: 0.9em 1.2em; border-radius: 6px; color: #fff; margin: 0.8em 0 1.2em; }
.verdict.passed { background: #1e7e34; } .verdict.failed { background: #b52a2a; }
.verdict .big { font-size: 1.5em; font-weight: 700; display: block; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.55em; text-align: right; vertical-align: top; }
td { white-space: nowrap; } td.text, td.hash { white-space: normal; } .scroll { overflow-x: auto; }
th { background: #f3f3f3; } td.name, th.name, td.text { text-align: left; }
table.text th, table.text td { text-align: left; }
tr.edge td { background: #fff6d5; font-weight: 600; }
td.fail { color: #b52a2a; font-weight: 700; } td.pass { color: #1e7e34; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
td.hash { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85em; word-break: break-all; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
figure svg { max-width: 100%; height: auto; display: block; }
table.confusion td { min-width: 2.2em; text-align: center; } table.confusion th { text-align: center; }
.note { color: #555; font-style: italic; }
"""


_e = escape


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; needs nothing but the report."""
    batch = str((report.get("config") or {}).get("signoff", {}).get("latency_batch", 1))
    colors = plots.model_colors(report["models"])
    sections = [
        _verdict(report),
        _models_table(report),
        _targets(report),
        "<h2>Plots</h2>",
        figure(plots.accuracy_vs_latency(report, batch, colors), caption_pareto(report, batch)),
        figure(plots.latency_distributions(report, batch, colors), caption_distributions(report, batch)),
        figure(plots.size_and_macs(report, colors), "File size (bytes) and MACs per image of every model."),
        search_trace_section(report),
        remeasured_section(report),
        uniform_baseline_section(report),
        depth_section(report),
        alternatives_section(report),
        timed_again_section(report),
        _quantization_aware(report),
        training_section(report),
        per_class_section(report),
        _gates_table(report),
        _environment(report),
        _artifacts(report),
        "<h2>Reproduce</h2>",
        f"<pre><code>{_e(report.get('reproduce', ''))}</code></pre>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>edgeforge sign-off: {_e(report['edge_model'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        "<h1>edgeforge sign-off report</h1>\n" + "\n".join(s for s in sections if s) + "\n</body>\n</html>\n"
    )


# --- text sections -----------------------------------------------------------------------------------------


def _verdict(report: dict) -> str:
    passed = bool(report["signoff"]["passed"])
    word = "PASSED" if passed else "FAILED"
    failed = [g["name"] for g in report["signoff"].get("gates", []) if not g["passed"]]
    failing = f"<br>Failed gates: {_e(', '.join(failed))}." if failed else ""
    return (
        f'<div class="verdict {word.lower()}"><span class="big">Sign-off {word}</span>'
        f"Edge model: <strong>{_e(report['edge_model'])}</strong> (release/model.onnx): "
        f"{_e(report.get('edge_model_reason', ''))}.{failing}</div>"
    )


def _quantization_aware(report: dict) -> str:
    """Post-training int8 against its fp32 source, and the quantization-aware fine-tune where it ran."""
    records = report.get("quantization_aware") or {}
    if not records:
        return ""
    first = next(iter(records.values()))
    return (
        "<h2>Quantization-aware fine-tune</h2>"
        f"<p>Validation accuracies in onnxruntime. quantize.qat: {_e(first['mode'])}; with auto it runs where "
        f"post-training int8 loses more than {first['max_drop']:g}; the more accurate int8 file is kept.</p>"
        + _table(QUANTIZATION_AWARE_HEADER, table_rows(quantization_aware_rows(records)))
    )


def _batches(report: dict) -> list[str]:
    seen: dict[str, None] = {}
    for m in report["models"]:
        seen.update(dict.fromkeys((m.get("latency") or {}).get(PROVIDER, {})))
    return sorted(seen, key=lambda b: int(b) if b.isdigit() else math.inf)


CI_KEYS = ("p90_ci_ms", "p99_ci_ms")  # the intervals shown; a bench before bench VERSION 9 has the p90's only


def _latency_cells(model: dict, batch: str, ci_keys: list[str]) -> str:
    lat = latency_at(model, batch)
    if lat is None:
        return "<td>–</td>" * (1 + len(ci_keys))
    cells = f"<td>{' / '.join(f'{lat[s]:.3f}' for s in STATS)}</td>"
    for key in ci_keys:
        ci = lat.get(key)
        cells += f"<td>{ci[0]:.3f} – {ci[1]:.3f}</td>" if ci else "<td>–</td>"
    return cells


def _models_table(report: dict) -> str:
    batches = _batches(report)
    ci_keys = {
        b: [key for key in CI_KEYS if any((latency_at(m, b) or {}).get(key) for m in report["models"])] for b in batches
    }
    header = ["model", "validation accuracy [95%]", "test accuracy [95%]", "agrees with teacher", "params", "MACs"]
    header += ["size (bytes)"]
    for b in batches:
        header += [f"bs{b} p50 / p90 / p99 (ms)"] + [f"bs{b} {key[:3]} 95% CI (ms)" for key in ci_keys[b]]
    rows = []
    for m in report["models"]:
        edge = m["name"] == report["edge_model"]
        cells = (
            f'<td class="name">{_e(m["name"])}{" (edge)" if edge else ""}</td>'
            f"<td>{_accuracy(m.get('validation_accuracy'), m.get('validation_interval'))}</td>"
            f"<td>{_accuracy(m['accuracy'], m.get('accuracy_interval'))}</td>"
            f"<td>{_fmt(m.get('agreement_with_teacher'), '.4f')}</td><td>{m['params']:,}</td><td>{m['macs']:,}</td>"
            f"<td>{m['size_bytes']:,}</td>" + "".join(_latency_cells(m, b, ci_keys[b]) for b in batches)
        )
        rows.append(f'<tr class="{"edge" if edge else ""}">{cells}</tr>')
    settings = "; ".join(f"{m['name']}: {m['settings_label']}" for m in report["models"] if "settings_label" in m)
    return (
        f"<h2>Models</h2>\n<p>Teacher → student ({_e(student_run(report))}) → pruned → int8 (of pruned); "
        "student_int8 is int8 of the student. Accuracy computed in onnxruntime with its 95% Wilson interval, on the "
        "validation split (every choice reads it) and the test split (reported only); latency on "
        f"{_e(PROVIDER)} in milliseconds, each model at the session settings measured fastest for it "
        f"({_e(settings or 'not recorded')}).</p>\n"
        + _table(header, rows)
        + _onnx_teacher(report.get("teacher_onnx"))
        + (f"\n<p>{_e(sentence)}</p>" if (sentence := pruned_is_alternative(report)) else "")
        + (f"\n<p><strong>{_e(moved)}</strong></p>" if (moved := moved_text(report)) else "")
        + (f"\n<p>{_e(held)}</p>" if (held := held_text(report)) else "")
    )


def _onnx_teacher(onnx: dict | None) -> str:
    return "" if not onnx else f"\n<p>{_e(onnx_teacher_sentence(onnx).replace('`', ''))}</p>"


def _accuracy(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "–"
    return _e(f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""))


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else _e(format(value, spec))


def _gate_number(value: Any) -> str:
    return "–" if value is None else _e(gate_number(value))


def _gates_table(report: dict) -> str:
    rows = [
        f'<tr><td class="name">{_e(g["name"])}</td>'
        f"<td>{_gate_number(g['limit'])}</td><td>{_gate_number(g['value'])}</td>"
        f'<td class="text">{_gate_basis(g)}</td>'
        f'<td class="{"pass" if g["passed"] else "fail"}">{"pass" if g["passed"] else "FAIL"}</td></tr>'
        for g in report["signoff"].get("gates", [])
    ]
    html = "<h2>Gates</h2>\n" + _table(["gate", "limit", "value", "compares", "verdict"], rows)
    failing = failing_rows(report)
    if failing:
        html += f"<h3>Every model against the gates</h3><p>{_e(FAILING_INTRO)}</p>" + _table(
            FAILING_HEADER, table_rows(failing)
        )
        hint = budget_hint(report)
        html += f"<p>{_e(hint)}</p>" if hint else ""
    return html


def _gate_basis(gate: dict) -> str:
    """What a gate compared, and for an accuracy gate on which split ('' for a gate that does not say)."""
    return _e(f"{gate['compares']} on the {gate['split']} split" if gate.get("split") else gate.get("compares", ""))


def _kv_rows(items: Iterable[tuple[str, Any]]) -> list[str]:
    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    return [f'<tr><td class="name">{_e(k)}</td><td class="text">{_e(text(v))}</td></tr>' for k, v in items]


def _targets(report: dict) -> str:
    if not report.get("latency_target"):
        return ""  # a report made before targets
    items = "".join(f"<li>{_e(line)}</li>" for line in target_descriptions(report))
    html = (
        f"<h2>Where latency was measured</h2>\n<p>Models are compared and gated on "
        f"<strong>{_e(report['latency_target']['name'])}</strong> (signoff.latency_target).</p>\n<ul>{items}</ul>\n"
    )
    table = target_rows(report)
    if table:
        header, cells = table
        html += _table(header, table_rows(cells), "text")
    return html


def _environment(report: dict) -> str:
    items = list((report.get("environment") or {}).items())
    items += [("machine identity", report.get("machine", {})), ("latency method", report.get("bench_method", {}))]
    return "<h2>Environment</h2>\n" + _table(["what", "value"], _kv_rows(items), "text")


def _artifacts(report: dict) -> str:
    rows = [
        f'<tr><td class="name">{_e(m["name"])}</td><td class="text">{_e(m.get("path", ""))}</td>'
        f'<td class="hash">{_e(m.get("sha256", ""))}</td></tr>'
        for m in report["models"]
    ]
    return "<h2>Artifacts</h2>\n" + _table(["model", "path (under artifacts/)", "sha256"], rows, "text")
