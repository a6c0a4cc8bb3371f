"""The plots of report.html, each a matplotlib Figure built from the report dict, and their inline SVG.

Figure, not pyplot: no global figure registry, no backend switch for the rest of the process.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import re
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from pipeline.reporting.gates import pareto_front
from pipeline.search.prune_sampled import configuration
from pipeline.training.recipes import LABELS_ALONE

PROVIDER = "CPUExecutionProvider"  # where the plots' latencies are read
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


def latency_at(model: dict, batch: str, provider: str = PROVIDER) -> dict[str, Any] | None:
    return (model.get("latency") or {}).get(provider, {}).get(batch)


def model_colors(models: list[dict]) -> dict[str, str]:
    others = iter(OTHER_COLORS * (len(models) // len(OTHER_COLORS) + 1))
    return {m["name"]: COLORS.get(m["name"]) or next(others) for m in models}


def plain_text(text: Any) -> str:
    """Report text for matplotlib, which would otherwise read `$...$` as mathtext."""
    return str(text).replace("$", r"\$")


def svg(fig: Figure) -> str:
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


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    # Figure, not pyplot: no global figure registry, no backend switch for the rest of the process.
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def wide(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > WIDE_RANGE


def accuracy_vs_latency(report: dict, batch: str, colors: dict[str, str]) -> Figure | None:
    """Every model measured: validation accuracy (with its 95% interval) against p50, the Pareto frontier, the edge
    model, and the baselines that share an architecture with a measured model, drawn hollow at its latency."""
    models = [m for m in report["models"] if latency_at(m, batch)]
    if not models:
        return None
    key = "validation_accuracy" if all("validation_accuracy" in m for m in models) else "accuracy"
    front = set(pareto_front(models, batch)) if key == "validation_accuracy" else set()
    fig, axes = new_figure(7.5, 4.6)
    ax = axes[0][0]
    for m in models:
        x, y = latency_at(m, batch)["p50_ms"], m[key]
        edge = m["name"] == report["edge_model"]
        interval = m.get("validation_interval" if key == "validation_accuracy" else "accuracy_interval")
        if interval:
            below, above = max(0.0, y - interval[0]), max(0.0, interval[1] - y)
            ax.errorbar(x, y, yerr=[[below], [above]], color=colors[m["name"]], alpha=0.5, zorder=2)
        ax.scatter(x, y, s=160 if edge else 60, color=colors[m["name"]], marker="*" if edge else "o", zorder=3)
        if edge:
            ax.scatter(x, y, s=420, facecolors="none", edgecolors="#b8860b", linewidths=2, zorder=4)
        label = plain_text(m["name"]) + (" (edge)" if edge else "") + (" ◆" if m["name"] in front else "")
        ax.annotate(label, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=9)
    for name, of, y in baselines(report):
        base = next((m for m in models if m["name"] == of), None)
        if base is not None and y is not None:
            x = latency_at(base, batch)["p50_ms"]
            ax.scatter(x, y, s=60, facecolors="none", edgecolors=colors[of], zorder=3)
            ax.annotate(plain_text(name), (x, y), xytext=(6, -11), textcoords="offset points", fontsize=8, color="#555")
    points = sorted((latency_at(m, batch)["p50_ms"], m[key]) for m in models if m["name"] in front)
    ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="#888", linestyle="--", zorder=2)
    if wide([latency_at(m, batch)["p50_ms"] for m in models]):
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, {PROVIDER})")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(True, alpha=0.3)
    return fig


def baselines(report: dict) -> list[tuple[str, str, float | None]]:
    """(label, the measured model whose architecture it has, its validation accuracy) of the report's baselines."""
    distill, pruning = report.get("distillation") or {}, report.get("pruning") or {}
    found = []
    if distill.get("baseline"):  # the student's other run: on labels alone, or distilled when labels alone was kept
        if distill.get("kept") == LABELS_ALONE:
            found.append(("student distilled", "student", distill["student"]["validation_accuracy"]))
        else:
            found.append(("student without teacher", "student", distill["baseline"]["validation_accuracy"]))
    if pruning.get("scratch") and pruning.get("shipped") != "alternative":  # else "pruned" has another architecture
        found.append(("pruned architecture from scratch", "pruned", pruning["scratch"]["validation_accuracy"]))
    return found


def search_trace(search: dict) -> Figure:
    """Ratio (share of channels removed) -> measured latency of the prune stage's budget search, with the budget and
    the limit, and the uniform search's ratios beside a per-layer search's (prune.uniform_baseline)."""
    fig, axes = new_figure(7.5, 3.8)
    ax = axes[0][0]
    trace = sorted(search["trace"], key=lambda e: e["ratio"])
    for form, color in (("fp32", "#1f77b4"), ("int8", "#d62728")):
        points = [(e["ratio"], e[f"{form}_ms"]) for e in trace if f"{form}_ms" in e]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=f"{form} p50")
    baseline = search.get("uniform_baseline")
    if baseline is not None:  # prune.uniform_baseline: the uniform search's ratios at the same budget
        points = sorted((e["ratio"], e["latency_ms"]) for e in baseline["trace"])
        ax.plot(*zip(*points, strict=True), marker="^", color="#2ca02c", linestyle="-.", label="uniform search p50")
        ax.axvline(baseline["ratio"], color="#2ca02c", linestyle=":", label=f"uniform ratio {baseline['ratio']:g}")
    ax.axhline(search["budget_ms"], color="#333", linestyle="--", label="budget")
    ax.axhline(search["limit_ms"], color="#888", linestyle=":", label="limit (budget − margin)")
    ax.axvline(search["ratio"], color="#b8860b", label=f"chosen ratio {search['ratio']:g}")
    ax.set_xlabel("share of channels pruned")
    ax.set_ylabel(f"p50 ms, batch {search['method']['batch']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def sampled_candidates(search: dict) -> Figure:
    """The sampled search's configurations: validation accuracy before fine-tune against the latency model's prediction
    (every configuration scored) and the measured p50 (those measured), with the budget and the chosen one."""
    fig, axes = new_figure(7.5, 3.8)
    ax = axes[0][0]
    points = [(c["model_ms"], c["validation"]["accuracy"]) for c in scored_configurations(search)]
    ax.scatter(*zip(*points, strict=True), s=14, color="#9aa5b1", label="scored (predicted from the table)")
    measured = [(e["latency_ms"], e["validation"]["accuracy"]) for e in search["trace"]]
    ax.scatter(*zip(*measured, strict=True), s=30, color="#1f77b4", marker="s", label="measured (median p50)")
    chosen = next(e for e in search["trace"] if e["channels"] == search["channels"])
    star = dict(marker="*", s=220, color="#b8860b", edgecolor="#333", zorder=3)
    ax.scatter([chosen["latency_ms"]], [chosen["validation"]["accuracy"]], label="chosen", **star)
    ax.axvline(search["budget_ms"], color="#333", linestyle="--", label="budget")
    ax.axvline(search["limit_ms"], color="#888", linestyle=":", label="limit (budget − margin)")
    ax.set_xlabel(f"p50 ms, batch {search['method']['batch']}")
    ax.set_ylabel("validation accuracy, no fine-tune")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def scored_configurations(search: dict) -> list[dict]:
    """Each configuration the sampled search scored, once (one reached at several targets is listed at each)."""
    return list({configuration(c["channels"]): c for r in search["rounds"] for c in r["configurations"]}.values())


def has_histogram(lat: dict) -> bool:
    hist = lat.get("histogram")
    return bool(hist and hist.get("counts") and sum(hist["counts"]) > 0)


def latency_distributions(report: dict, batch: str, colors: dict[str, str]) -> Figure | None:
    models = [m for m in report["models"] if latency_at(m, batch)]
    if not models:
        return None
    if all(has_histogram(latency_at(m, batch)) for m in models):
        return _latency_histograms(models, batch, colors)
    return _latency_markers(models, batch, colors)


def _latency_histograms(models: list[dict], batch: str, colors: dict[str, str]) -> Figure:
    """One row per model, sharing the latency axis, so shapes and tails compare at a glance."""
    fig, axes = new_figure(7.5, 0.9 + 1.0 * len(models), nrows=len(models), sharex=True)
    edges_seen: list[float] = []
    for ax, m in zip((row[0] for row in axes), models, strict=True):
        lat, color = latency_at(m, batch), colors[m["name"]]
        counts, edges = lat["histogram"]["counts"], lat["histogram"]["edges_ms"]
        ax.stairs([c / sum(counts) for c in counts], edges, fill=True, color=color, alpha=0.5)
        for stat, style in zip(STATS, ("-", "--", ":"), strict=True):
            ax.axvline(lat[stat], color=color, linestyle=style, linewidth=1.5, label=stat[:3])
        ax.set_ylabel(plain_text(m["name"]), rotation=0, ha="right", va="center", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        edges_seen += [e for e in edges if e > 0]
    if wide(edges_seen):
        axes[-1][0].set_xscale("log")
    axes[0][0].legend(loc="upper right", fontsize=8, ncols=3)
    axes[-1][0].set_xlabel(f"latency per call at batch {batch} (ms)")
    return fig


def _latency_markers(models: list[dict], batch: str, colors: dict[str, str]) -> Figure:
    fig, axes = new_figure(7.5, 1.2 + 0.45 * len(models))
    ax = axes[0][0]
    values = []
    for row, m in enumerate(models):
        lat, color = latency_at(m, batch), colors[m["name"]]
        ax.plot([lat["p50_ms"], lat["p99_ms"]], [row, row], color=color, linewidth=2, alpha=0.6)
        for stat, marker in zip(STATS, ("o", "s", "^"), strict=True):
            ax.scatter(lat[stat], row, marker=marker, color=color, s=45, zorder=3, label=stat[:3] if row == 0 else None)
            values.append(lat[stat])
    ax.set_yticks(range(len(models)), [plain_text(m["name"]) for m in models], fontsize=9)
    ax.set_ylim(len(models) - 0.5, -0.5)  # inverted: first model on top, as in the table
    if wide(values):
        ax.set_xscale("log")
    ax.set_xlabel(f"latency per call at batch {batch} (ms)")
    ax.legend(fontsize=8, loc="lower right", ncols=3)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def size_and_macs(report: dict, colors: dict[str, str]) -> Figure:
    models = report["models"]
    names = [plain_text(m["name"]) for m in models]
    fig, axes = new_figure(9, 3.6, ncols=2)
    for ax, key, title in (
        (axes[0][0], "size_bytes", "ONNX file size (bytes)"),
        (axes[0][1], "macs", "MACs per image"),
    ):
        values = [m[key] for m in models]
        bars = ax.bar(names, values, color=[colors[m["name"]] for m in models])
        ax.bar_label(bars, labels=[short(v) for v in values], fontsize=8)  # linear: log bars mislead
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return fig


def short(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:g}"


def training_curves(stages: dict[str, list[dict]]) -> Figure:
    """Per-epoch training loss and accuracy of every training stage."""
    fig, axes = new_figure(9, 3.6, ncols=2)
    # Cycled: each trained prune.alternatives adds a curve (two with distill.baseline), more than there are colours
    palette = itertools.cycle(["#4c72b0", "#dd8452", "#8c8c8c", "#55a868", *OTHER_COLORS])
    for name, history in stages.items():
        color, text = next(palette), TRAINING_LABELS.get(name, name)
        epochs = [h["epoch"] for h in history]
        for ax, key in ((axes[0][0], "loss"), (axes[0][1], "train_accuracy")):
            ax.plot(epochs, [h.get(key, math.nan) for h in history], marker=".", color=color, label=plain_text(text))
    axes[0][0].set(xlabel="epoch", ylabel="training loss")
    axes[0][1].set(xlabel="epoch", ylabel="training accuracy")
    if wide([h["loss"] for history in stages.values() for h in history if h.get("loss") is not None]):
        axes[0][0].set_yscale("log")
    axes[0][1].legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
    return fig


def per_class_figure(series: list[dict], class_names: list[str]) -> Figure:
    n = len(series[0]["per_class_accuracy"])
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    fig, axes = new_figure(max(7.5, min(0.35 * n * len(series), 16)), 3.8)
    ax = axes[0][0]
    width = 0.8 / len(series)
    for i, (m, color) in enumerate(zip(series, ("#c9a227", "#4c72b0"), strict=False)):
        offsets = [k + (i - (len(series) - 1) / 2) * width for k in range(n)]
        label = plain_text(m["name"]) + (" (edge)" if i == 0 else "")
        ax.bar(offsets, m.get("per_class_accuracy") or [math.nan] * n, width=width, color=color, label=label)
    ax.set_xticks(range(n), [plain_text(c) for c in names], rotation=0 if n <= 12 else 90, fontsize=8)
    low = min(a for m in series for a in (m.get("per_class_accuracy") or [1.0]))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)  # the interesting part is near 1
    ax.set(xlabel="class", ylabel="test accuracy")
    fig.legend(loc="outside upper center", ncols=len(series), fontsize=8)  # above: bars fill the axes to 1.0
    ax.grid(True, axis="y", alpha=0.3)
    return fig
