"""A self-contained HTML page of a sign-off report (report.json): verdict, tables and plots in one file.

Nothing is fetched when the page is opened: the CSS is inline, fonts are the system's, and every plot is an
SVG drawn by matplotlib (text as paths) and embedded in the page. Every string taken from the report goes
through `html.escape`.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import re
from collections.abc import Iterable
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from stages.bench import PROVIDER

COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "pruned": "#55a868", "int8": "#c44e52", "student_int8": "#8172b3"}
OTHER_COLORS = ("#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
WIDE_RANGE = 20  # max / min beyond which an axis goes logarithmic
STATS = ("p50_ms", "p90_ms", "p99_ms")
TRAINING_LABELS = {
    "teacher": "teacher",
    "student": "student (distilled)",
    "student_without_teacher": "student without teacher",
    "pruned_finetune": "pruned fine-tune",
}

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


def _latency(model: dict, batch: str, provider: str = PROVIDER) -> dict[str, Any] | None:
    return (model.get("latency") or {}).get(provider, {}).get(batch)


def pareto_front(models: list[dict], batch: str = "1", provider: str = PROVIDER) -> list[str]:
    """Names (in input order) of the models no other model dominates in accuracy and p50 latency at `batch`.

    A model is dominated when another is at least as accurate and at least as fast, and strictly better in
    one of the two; models without a latency at `batch` are left out.
    """
    points = {m["name"]: (m["accuracy"], lat["p50_ms"]) for m in models if (lat := _latency(m, batch, provider))}

    def dominated(accuracy: float, p50: float) -> bool:
        return any(
            a >= accuracy and q <= p50 and (a > accuracy or q < p50)
            for a, q in points.values()
            if (a, q) != (accuracy, p50)
        )

    return [name for name, (accuracy, p50) in points.items() if not dominated(accuracy, p50)]


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; needs nothing but the report."""
    batch = str((report.get("config") or {}).get("signoff", {}).get("latency_batch", 1))
    colors = _model_colors(report["models"])
    sections = [
        _verdict(report),
        _models_table(report),
        "<h2>Plots</h2>",
        _figure(_accuracy_vs_latency(report, batch, colors), _caption_pareto(report, batch)),
        _figure(_latency_distributions(report, batch, colors), _caption_distributions(report, batch)),
        _figure(_size_and_macs(report, colors), "File size (bytes) and MACs per image of every model."),
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
    lat = _latency(model, batch)
    if lat is None:
        return "<td>–</td><td>–</td>" if with_ci else "<td>–</td>"
    cells = f"<td>{' / '.join(f'{lat[s]:.3f}' for s in STATS)}</td>"
    if with_ci:
        ci = lat.get("p90_ci_ms")
        cells += f"<td>{ci[0]:.3f} – {ci[1]:.3f}</td>" if ci else "<td>–</td>"
    return cells


def _models_table(report: dict) -> str:
    batches = _batches(report)
    has_ci = {b: any((_latency(m, b) or {}).get("p90_ci_ms") for m in report["models"]) for b in batches}
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


# --- plots ---------------------------------------------------------------------------------------------------


def _model_colors(models: list[dict]) -> dict[str, str]:
    others = iter(OTHER_COLORS * (len(models) // len(OTHER_COLORS) + 1))
    return {m["name"]: COLORS.get(m["name"]) or next(others) for m in models}


def _label(text: Any) -> str:
    """Report text for matplotlib, which would otherwise read `$...$` as mathtext."""
    return str(text).replace("$", r"\$")


def _figure(fig: Figure | None, caption: str) -> str:
    if fig is None:
        return '<p class="note">No model has a latency at this batch size on this provider: plot left out.</p>'
    return f"<figure>{_svg(fig)}<figcaption>{caption}</figcaption></figure>"


def _svg(fig: Figure) -> str:
    """The figure as an inline `<svg>` element: no XML prolog, no metadata, ids unique within the page."""
    buffer = io.StringIO()
    # Text as paths: the page must look the same without the fonts matplotlib used; a fixed salt keeps ids stable.
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "edgeforge"}):
        fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    prefix = "f" + hashlib.sha256(svg.encode()).hexdigest()[:8] + "-"  # deterministic, unlike a counter or uuid
    # Namespace declarations are implied for <svg> inside HTML; dropping them leaves no URL in the page.
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)
    # Several figures in one page: their ids (glyphs, clip paths, markers) must not collide.
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', svg)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", svg)


def _new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    # Figure, not pyplot: no global figure registry, no backend switch for the rest of the process.
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _wide(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > WIDE_RANGE


def _accuracy_vs_latency(report: dict, batch: str, colors: dict[str, str]) -> Figure | None:
    models = [m for m in report["models"] if _latency(m, batch)]
    if not models:
        return None
    front = set(pareto_front(models, batch))
    fig, axes = _new_figure(7.5, 4.6)
    ax = axes[0][0]
    for m in models:
        x, y = _latency(m, batch)["p50_ms"], m["accuracy"]
        edge = m["name"] == report["edge_model"]
        ax.scatter(x, y, s=160 if edge else 60, color=colors[m["name"]], marker="*" if edge else "o", zorder=3)
        if edge:
            ax.scatter(x, y, s=420, facecolors="none", edgecolors="#b8860b", linewidths=2, zorder=4)
        label = _label(m["name"]) + (" (edge)" if edge else "") + (" ◆" if m["name"] in front else "")
        ax.annotate(label, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    points = sorted((_latency(m, batch)["p50_ms"], m["accuracy"]) for m in models if m["name"] in front)
    ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="#888", linestyle="--", zorder=2)
    if _wide([_latency(m, batch)["p50_ms"] for m in models]):
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, {PROVIDER})")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    return fig


def _search_trace_section(report: dict) -> str:
    """Ratio -> measured latency of the prune stage's budget search, with the budget and the limit."""
    search = report.get("latency_search")
    if not search:
        return ""
    fig, axes = _new_figure(7.5, 3.8)
    ax = axes[0][0]
    trace = sorted(search["trace"], key=lambda e: e["ratio"])
    for form, color in (("fp32", "#1f77b4"), ("int8", "#d62728")):
        points = [(e["ratio"], e[f"{form}_ms"]) for e in trace if f"{form}_ms" in e]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=f"{form} p50")
    ax.axhline(search["budget_ms"], color="#333", linestyle="--", label="budget")
    ax.axhline(search["limit_ms"], color="#888", linestyle=":", label="limit (budget − margin)")
    ax.axvline(search["ratio"], color="#b8860b", label=f"chosen ratio {search['ratio']:g}")
    ax.set_xlabel("share of channels pruned")
    ax.set_ylabel(f"p50 ms, batch {search['method']['batch']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    verdict = "met" if search["met"] else f"not reached: {search.get('message', '')}"
    caption = (
        f"Latency-budget search: every candidate measured before fine-tuning ({len(trace)} in "
        f"{search['seconds']:.1f} s). Budget {search['budget_ms']:g} ms {verdict}; predicted "
        f"{search['predicted_ms']:.4f} ms, achieved after the fine-tune {search['achieved']['latency_ms']:.4f} ms."
    )
    return _figure(fig, _e(caption))


def _caption_pareto(report: dict, batch: str) -> str:
    front = pareto_front(report["models"], batch)
    return (
        f"Accuracy against p50 latency at batch {_e(batch)}. The dashed line and ◆ mark the Pareto front "
        f"({_e(', '.join(front))}): no other model is both at least as accurate and at least as fast. The edge "
        f"model ({_e(report['edge_model'])}) is the star in the gold ring."
    )


def _has_histogram(lat: dict) -> bool:
    hist = lat.get("histogram")
    return bool(hist and hist.get("counts") and sum(hist["counts"]) > 0)


def _caption_distributions(report: dict, batch: str) -> str:
    lats = [lat for m in report["models"] if (lat := _latency(m, batch))]
    if lats and all(_has_histogram(lat) for lat in lats):
        return (
            f"Latency per call at batch {_e(batch)}: histogram of the timed runs (share of runs per bin), with the "
            "p50 (solid), p90 (dashed) and p99 (dotted) as vertical lines."
        )
    return (
        f"Latency per call at batch {_e(batch)}: p50 (circle), p90 (square) and p99 (triangle) of every model; the "
        "report holds no latency histograms."
    )


def _latency_distributions(report: dict, batch: str, colors: dict[str, str]) -> Figure | None:
    models = [m for m in report["models"] if _latency(m, batch)]
    if not models:
        return None
    if all(_has_histogram(_latency(m, batch)) for m in models):
        return _latency_histograms(models, batch, colors)
    return _latency_markers(models, batch, colors)


def _latency_histograms(models: list[dict], batch: str, colors: dict[str, str]) -> Figure:
    """One row per model, sharing the latency axis, so shapes and tails compare at a glance."""
    fig, axes = _new_figure(7.5, 0.9 + 1.0 * len(models), nrows=len(models), sharex=True)
    edges_seen: list[float] = []
    for ax, m in zip((row[0] for row in axes), models, strict=True):
        lat, color = _latency(m, batch), colors[m["name"]]
        counts, edges = lat["histogram"]["counts"], lat["histogram"]["edges_ms"]
        ax.stairs([c / sum(counts) for c in counts], edges, fill=True, color=color, alpha=0.5)
        for stat, style in zip(STATS, ("-", "--", ":"), strict=True):
            ax.axvline(lat[stat], color=color, linestyle=style, linewidth=1.5, label=stat[:3])
        ax.set_ylabel(_label(m["name"]), rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        edges_seen += [e for e in edges if e > 0]
    if _wide(edges_seen):
        axes[-1][0].set_xscale("log")
    axes[0][0].legend(loc="upper right", fontsize=8, ncols=3)
    axes[-1][0].set_xlabel(f"latency per call at batch {batch} (ms)")
    return fig


def _latency_markers(models: list[dict], batch: str, colors: dict[str, str]) -> Figure:
    fig, axes = _new_figure(7.5, 1.2 + 0.45 * len(models))
    ax = axes[0][0]
    values = []
    for row, m in enumerate(models):
        lat, color = _latency(m, batch), colors[m["name"]]
        ax.plot([lat["p50_ms"], lat["p99_ms"]], [row, row], color=color, linewidth=2, alpha=0.6)
        for stat, marker in zip(STATS, ("o", "s", "^"), strict=True):
            ax.scatter(lat[stat], row, marker=marker, color=color, s=45, zorder=3, label=stat[:3] if row == 0 else None)
            values.append(lat[stat])
    ax.set_yticks(range(len(models)), [_label(m["name"]) for m in models], fontsize=9)
    ax.set_ylim(len(models) - 0.5, -0.5)  # inverted: first model on top, as in the table
    if _wide(values):
        ax.set_xscale("log")
    ax.set_xlabel(f"latency per call at batch {batch} (ms)")
    ax.legend(fontsize=8, loc="lower right", ncols=3)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _size_and_macs(report: dict, colors: dict[str, str]) -> Figure:
    models = report["models"]
    names = [_label(m["name"]) for m in models]
    fig, axes = _new_figure(9, 3.6, ncols=2)
    for ax, key, title in (
        (axes[0][0], "size_bytes", "ONNX file size (bytes)"),
        (axes[0][1], "macs", "MACs per image"),
    ):
        values = [m[key] for m in models]
        bars = ax.bar(names, values, color=[colors[m["name"]] for m in models])
        ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=8)  # linear: log bars mislead
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return fig


def _short(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:g}"


def _training_section(report: dict) -> str:
    stages = {name: h for name, h in (report.get("training") or {}).items() if h}
    if not stages:
        return '<h2>Training</h2>\n<p class="note">The report holds no training history.</p>'
    fig, axes = _new_figure(9, 3.6, ncols=2)
    palette = iter(["#4c72b0", "#dd8452", "#8c8c8c", "#55a868", *OTHER_COLORS])
    for name, history in stages.items():
        color, label = next(palette), TRAINING_LABELS.get(name, name)
        epochs = [h["epoch"] for h in history]
        for ax, key in ((axes[0][0], "loss"), (axes[0][1], "train_accuracy")):
            ax.plot(epochs, [h.get(key, math.nan) for h in history], marker=".", color=color, label=_label(label))
    axes[0][0].set(xlabel="epoch", ylabel="training loss")
    axes[0][1].set(xlabel="epoch", ylabel="training accuracy")
    if _wide([h["loss"] for history in stages.values() for h in history if h.get("loss") is not None]):
        axes[0][0].set_yscale("log")
    axes[0][1].legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
    caption = (
        "Per-epoch training loss and accuracy (on augmented training batches) of every training stage in the "
        "report. Each stage's loss is its own objective (the students' includes the T²-scaled distillation term), "
        "so compare shapes, not levels, across stages."
    )
    return "<h2>Training</h2>\n" + _figure(fig, caption)


def _per_class_section(report: dict) -> str:
    by_name = {m["name"]: m for m in report["models"]}
    edge, teacher = by_name.get(report["edge_model"]), by_name.get("teacher")
    class_names = [str(c) for c in (report.get("dataset") or {}).get("class_names", [])]
    parts = ["<h2>Per-class accuracy of the edge model</h2>"]
    if edge and edge.get("per_class_accuracy"):
        series = [edge] if teacher is None or teacher is edge else [edge, teacher]
        parts.append(_figure(_per_class_figure(series, class_names), _per_class_caption(series)))
    else:
        parts.append('<p class="note">The report holds no per-class accuracy for the edge model.</p>')
    if edge and edge.get("confusion_matrix"):
        parts.append(_confusion_table(edge, class_names))
    return "\n".join(parts)


def _per_class_caption(series: list[dict]) -> str:
    names = " and ".join(_e(m["name"]) for m in series)
    return f"Test accuracy per class of {names}."


def _per_class_figure(series: list[dict], class_names: list[str]) -> Figure:
    n = len(series[0]["per_class_accuracy"])
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    fig, axes = _new_figure(max(7.5, min(0.35 * n * len(series), 16)), 3.8)
    ax = axes[0][0]
    width = 0.8 / len(series)
    for i, (m, color) in enumerate(zip(series, ("#c9a227", "#4c72b0"), strict=False)):
        offsets = [k + (i - (len(series) - 1) / 2) * width for k in range(n)]
        label = _label(m["name"]) + (" (edge)" if i == 0 else "")
        ax.bar(offsets, m.get("per_class_accuracy") or [math.nan] * n, width=width, color=color, label=label)
    ax.set_xticks(range(n), [_label(c) for c in names], rotation=0 if n <= 12 else 90, fontsize=8)
    low = min(a for m in series for a in (m.get("per_class_accuracy") or [1.0]))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)  # the interesting part is near 1
    ax.set(xlabel="class", ylabel="test accuracy")
    fig.legend(loc="outside upper center", ncols=len(series), fontsize=8)  # above: bars fill the axes to 1.0
    ax.grid(True, axis="y", alpha=0.3)
    return fig
