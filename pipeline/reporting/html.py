"""A self-contained HTML page of a sign-off report (report.json): verdict, tables and plots in one file.

Nothing is fetched when the page is opened: the CSS is inline, fonts are the system's, and every plot is an
SVG drawn by matplotlib (text as paths) and embedded in the page. Every string taken from the report goes
through `html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

from matplotlib.figure import Figure

from pipeline.reporting import plots
from pipeline.reporting.gates import pareto_front
from pipeline.reporting.plots import PROVIDER, STATS, latency_at

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


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; needs nothing but the report."""
    batch = str((report.get("config") or {}).get("signoff", {}).get("latency_batch", 1))
    colors = plots.model_colors(report["models"])
    sections = [
        _verdict(report),
        _models_table(report),
        "<h2>Plots</h2>",
        _figure(plots.accuracy_vs_latency(report, batch, colors), _caption_pareto(report, batch)),
        _figure(plots.latency_distributions(report, batch, colors), _caption_distributions(report, batch)),
        _figure(plots.size_and_macs(report, colors), "File size (bytes) and MACs per image of every model."),
        _search_trace_section(report),
        _training_section(report),
        _per_class_section(report),
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


def _table(header: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    """`header` are escaped here; `rows` are finished `<tr>` strings whose cells were escaped by the caller."""
    head = "".join(f'<th class="{"name" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _batches(report: dict) -> list[str]:
    seen: dict[str, None] = {}
    for m in report["models"]:
        seen.update(dict.fromkeys((m.get("latency") or {}).get(PROVIDER, {})))
    return sorted(seen, key=lambda b: int(b) if b.isdigit() else math.inf)


def _latency_cells(model: dict, batch: str, with_ci: bool) -> str:
    lat = latency_at(model, batch)
    if lat is None:
        return "<td>–</td><td>–</td>" if with_ci else "<td>–</td>"
    cells = f"<td>{' / '.join(f'{lat[s]:.3f}' for s in STATS)}</td>"
    if with_ci:
        ci = lat.get("p90_ci_ms")
        cells += f"<td>{ci[0]:.3f} – {ci[1]:.3f}</td>" if ci else "<td>–</td>"
    return cells


def _models_table(report: dict) -> str:
    batches = _batches(report)
    has_ci = {b: any((latency_at(m, b) or {}).get("p90_ci_ms") for m in report["models"]) for b in batches}
    header = ["model", "accuracy", "agrees with teacher", "params", "MACs", "size (bytes)"]
    for b in batches:
        header += [f"bs{b} p50 / p90 / p99 (ms)"] + ([f"bs{b} p90 CI (ms)"] if has_ci[b] else [])
    rows = []
    for m in report["models"]:
        edge = m["name"] == report["edge_model"]
        cells = (
            f'<td class="name">{_e(m["name"])}{" (edge)" if edge else ""}</td><td>{m["accuracy"]:.4f}</td>'
            f"<td>{_fmt(m.get('agreement_with_teacher'), '.4f')}</td><td>{m['params']:,}</td><td>{m['macs']:,}</td>"
            f"<td>{m['size_bytes']:,}</td>" + "".join(_latency_cells(m, b, has_ci[b]) for b in batches)
        )
        rows.append(f'<tr class="{"edge" if edge else ""}">{cells}</tr>')
    threads = (report.get("environment") or {}).get("threads", "?")
    return (
        "<h2>Models</h2>\n<p>Teacher → student (distilled) → pruned → int8 (of pruned); student_int8 is int8 of the "
        f"student. Accuracy on the test split, computed in onnxruntime; latency on {_e(PROVIDER)} with "
        f"{_e(threads)} intra-op threads, in milliseconds.</p>\n" + _table(header, rows)
    )


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else _e(format(value, spec))


def _gate_number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"  # byte counts: 20,000 rather than 2e+04
    return _fmt(value, ".4g")


def _gates_table(report: dict) -> str:
    rows = [
        f'<tr><td class="name">{_e(g["name"])}</td>'
        f"<td>{_gate_number(g['limit'])}</td><td>{_gate_number(g['value'])}</td>"
        f'<td class="{"pass" if g["passed"] else "fail"}">{"pass" if g["passed"] else "FAIL"}</td></tr>'
        for g in report["signoff"].get("gates", [])
    ]
    return "<h2>Gates</h2>\n" + _table(["gate", "limit", "value", "verdict"], rows)


def _kv_rows(items: Iterable[tuple[str, Any]]) -> list[str]:
    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return str(value)

    return [f'<tr><td class="name">{_e(k)}</td><td class="text">{_e(text(v))}</td></tr>' for k, v in items]


def _environment(report: dict) -> str:
    items = list((report.get("environment") or {}).items())
    items += [("session options", report.get("session_options", {})), ("method", report.get("bench_method", {}))]
    return "<h2>Environment</h2>\n" + _table(["what", "value"], _kv_rows(items), "text")


def _artifacts(report: dict) -> str:
    rows = [
        f'<tr><td class="name">{_e(m["name"])}</td><td class="text">{_e(m.get("path", ""))}</td>'
        f'<td class="hash">{_e(m.get("sha256", ""))}</td></tr>'
        for m in report["models"]
    ]
    return "<h2>Artifacts</h2>\n" + _table(["model", "path (under artifacts/)", "sha256"], rows, "text")


def _confusion_table(model: dict, class_names: list[str]) -> str:
    matrix = model["confusion_matrix"]
    names = class_names if len(class_names) == len(matrix) else [str(i) for i in range(len(matrix))]
    top = max((max(row) for row in matrix if row), default=0) or 1
    rows = []
    for i, row in enumerate(matrix):
        cells = "".join(_confusion_cell(count, i == j, top) for j, count in enumerate(row))
        rows.append(f'<tr><th class="name">{_e(names[i])}</th>{cells}</tr>')
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    return (
        f"<p>Confusion matrix of the edge model ({_e(model['name'])}) on the test split: rows are the true class, "
        f'columns the predicted one.</p>\n<div class="scroll"><table class="confusion">'
        f'<thead><tr><th class="name">true \\ predicted</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _confusion_cell(count: int, diagonal: bool, top: int) -> str:
    # Shade by count so the errors stand out: green on the diagonal, red off it.
    alpha = 0.0 if count == 0 else 0.12 + 0.6 * count / top
    rgb = "30,126,52" if diagonal else "181,42,42"
    return f'<td style="background: rgba({rgb},{alpha:.2f})">{int(count)}</td>'


# --- sections with plots ---------------------------------------------------------------------------------------


def _figure(fig: Figure | None, caption: str) -> str:
    if fig is None:
        return '<p class="note">No model has a latency at this batch size on this provider: plot left out.</p>'
    return f"<figure>{plots.svg(fig)}<figcaption>{caption}</figcaption></figure>"


def _search_trace_section(report: dict) -> str:
    search = report.get("latency_search")
    if not search:
        return ""
    verdict = "met" if search["met"] else f"not reached: {search.get('message', '')}"
    caption = (
        f"Latency-budget search: every candidate measured before fine-tuning ({len(search['trace'])} in "
        f"{search['seconds']:.1f} s). Budget {search['budget_ms']:g} ms {verdict}; predicted "
        f"{search['predicted_ms']:.4f} ms, achieved after the fine-tune {search['achieved']['latency_ms']:.4f} ms."
    )
    return _figure(plots.search_trace(search), _e(caption))


def _caption_pareto(report: dict, batch: str) -> str:
    front = pareto_front(report["models"], batch)
    return (
        f"Accuracy against p50 latency at batch {_e(batch)}. The dashed line and ◆ mark the Pareto front "
        f"({_e(', '.join(front))}): no other model is both at least as accurate and at least as fast. The edge "
        f"model ({_e(report['edge_model'])}) is the star in the gold ring."
    )


def _caption_distributions(report: dict, batch: str) -> str:
    lats = [lat for m in report["models"] if (lat := latency_at(m, batch))]
    if lats and all(plots.has_histogram(lat) for lat in lats):
        return (
            f"Latency per call at batch {_e(batch)}: histogram of the timed runs (share of runs per bin), with the "
            "p50 (solid), p90 (dashed) and p99 (dotted) as vertical lines."
        )
    return (
        f"Latency per call at batch {_e(batch)}: p50 (circle), p90 (square) and p99 (triangle) of every model; the "
        "report holds no latency histograms."
    )


def _training_section(report: dict) -> str:
    stages = {name: h for name, h in (report.get("training") or {}).items() if h}
    if not stages:
        return '<h2>Training</h2>\n<p class="note">The report holds no training history.</p>'
    caption = (
        "Per-epoch training loss and accuracy (on augmented training batches) of every training stage in the "
        "report. Each stage's loss is its own objective (the students' includes the T²-scaled distillation term), "
        "so compare shapes, not levels, across stages."
    )
    return "<h2>Training</h2>\n" + _figure(plots.training_curves(stages), caption)


def _per_class_section(report: dict) -> str:
    by_name = {m["name"]: m for m in report["models"]}
    edge, teacher = by_name.get(report["edge_model"]), by_name.get("teacher")
    class_names = [str(c) for c in (report.get("dataset") or {}).get("class_names", [])]
    parts = ["<h2>Per-class accuracy of the edge model</h2>"]
    if edge and edge.get("per_class_accuracy"):
        series = [edge] if teacher is None or teacher is edge else [edge, teacher]
        parts.append(_figure(plots.per_class_figure(series, class_names), _per_class_caption(series)))
    else:
        parts.append('<p class="note">The report holds no per-class accuracy for the edge model.</p>')
    if edge and edge.get("confusion_matrix"):
        parts.append(_confusion_table(edge, class_names))
    return "\n".join(parts)


def _per_class_caption(series: list[dict]) -> str:
    names = " and ".join(_e(m["name"]) for m in series)
    return f"Test accuracy per class of {names}."
