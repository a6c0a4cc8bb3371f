"""The sections of report.html that hold a plot (pipeline/reporting/plots.py draws them): each figure inline as SVG
with its caption, the training curves, the search trace and the per-class accuracy with its confusion matrix; and
the page's escaping and table helpers, shared by every section."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Any

from matplotlib.figure import Figure

from pipeline.reporting import plots
from pipeline.reporting.budget_gate import budget_source
from pipeline.reporting.gates import pareto_front
from pipeline.reporting.latency_search_sections import probe_source
from pipeline.reporting.plots import latency_at


def escape(value: Any) -> str:
    """Report text made safe inside HTML (quotes too: it also goes into attributes)."""
    return html.escape(str(value), quote=True)


_e = escape
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def table(header: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    """`header` are escaped here; `rows` are finished `<tr>` strings whose cells were escaped by the caller."""
    head = "".join(f'<th class="{"name" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def table_rows(cell_rows: Iterable[Iterable[str]]) -> list[str]:
    """`<tr>` strings of report.md's cells, escaped; a cell's markdown bold (`**chosen**`) becomes <strong>."""
    return ["<tr>" + "".join(f"<td>{_strong(_e(cell))}</td>" for cell in cells) + "</tr>" for cells in cell_rows]


def _strong(text: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", text)


def figure(fig: Figure | None, caption: str) -> str:
    if fig is None:
        return '<p class="note">No model has a latency at this batch size on this provider: plot left out.</p>'
    return f"<figure>{plots.svg(fig)}<figcaption>{caption}</figcaption></figure>"


def search_trace_section(report: dict) -> str:
    search = report.get("latency_search")
    if not search:
        return ""
    verdict = "met" if search["met"] else f"not reached: {search.get('message', '')}"
    caption = (
        f"Latency-budget search: every candidate measured before fine-tuning ({len(search['trace'])} in "
        f"{search['seconds']:.1f} s). Budget {search['budget_ms']:g} ms {verdict}; predicted "
        f"{search['predicted_ms']:.4f} ms, achieved after the fine-tune {search['achieved']['latency_ms']:.4f} ms."
        f"{budget_source(report.get('budget_from_teacher'))}{probe_source(report.get('thread_probe'))}"
    )
    if "uniform_baseline" in search:
        baseline = search["uniform_baseline"]
        caption += (
            f" Beside it, the {len(baseline['trace'])} ratios the uniform search measured at the same budget "
            f"(prune.uniform_baseline; ratio {baseline['ratio']:g} chosen; the {search['shipped']} search's model "
            "ships)."
        )
    trace = figure(plots.search_trace(search), _e(caption))
    if search.get("search") != "sampled":
        return trace
    scored = len(plots.scored_configurations(search))
    caption = (
        f"Sampled search: the {scored} configurations scored on validation (pruned from the student, BatchNorm "
        f"re-estimated, no fine-tune) at the latency the table predicts, the {len(search['trace'])} measured at "
        "their measured p50, best-scoring first at each target; the star is the one chosen."
    )
    return trace + figure(plots.sampled_candidates(search), _e(caption))


def caption_pareto(report: dict, batch: str) -> str:
    if not all("validation_accuracy" in m for m in report["models"]):
        return f"Test accuracy against p50 latency at batch {_e(batch)}; the report has no validation accuracies."
    front = pareto_front(report["models"], batch)
    hollow = ", ".join(f"{name} (at the {of} model's latency)" for name, of, _ in plots.baselines(report))
    return (
        f"Validation accuracy (the split every choice reads), with its 95% interval, against p50 latency at batch "
        f"{_e(batch)}, for every model measured. The dashed line and ◆ mark the Pareto front "
        f"({_e(', '.join(front))}): no other model is both at least as accurate and at least as fast. The edge "
        f"model ({_e(report['edge_model'])}) is the star in the gold ring."
        + (f" Hollow circles: baselines of the same architecture, {_e(hollow)}." if hollow else "")
    )


def caption_distributions(report: dict, batch: str) -> str:
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


def training_section(report: dict) -> str:
    stages = {name: h for name, h in (report.get("training") or {}).items() if h}
    if not stages:
        return '<h2>Training</h2>\n<p class="note">The report holds no training history.</p>'
    caption = (
        "Per-epoch training loss and accuracy (on augmented training batches) of every training stage in the "
        "report. Each stage's loss is its own objective (the students' includes the T²-scaled distillation term), "
        "so compare shapes, not levels, across stages."
    )
    return "<h2>Training</h2>\n" + figure(plots.training_curves(stages), caption)


def per_class_section(report: dict) -> str:
    by_name = {m["name"]: m for m in report["models"]}
    edge, teacher = by_name.get(report["edge_model"]), by_name.get("teacher")
    class_names = [str(c) for c in (report.get("dataset") or {}).get("class_names", [])]
    parts = ["<h2>Per-class accuracy of the edge model</h2>"]
    if edge and edge.get("per_class_accuracy"):
        series = [edge] if teacher is None or teacher is edge else [edge, teacher]
        parts.append(figure(plots.per_class_figure(series, class_names), _per_class_caption(series)))
    else:
        parts.append('<p class="note">The report holds no per-class accuracy for the edge model.</p>')
    if edge and edge.get("confusion_matrix"):
        parts.append(_confusion_table(edge, class_names))
    return "\n".join(parts)


def _per_class_caption(series: list[dict]) -> str:
    names = " and ".join(_e(m["name"]) for m in series)
    return f"Test accuracy per class of {names}."


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
