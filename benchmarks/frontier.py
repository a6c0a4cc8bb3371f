"""Accuracy against latency across budgets: the per-layer search and its uniform baseline, from one run per budget.

Each run is `edgeforge run ... --set prune.target_latency_ms=BUDGET --set prune.search=sampled` (or per_layer),
which prunes the student both ways at that budget, fine-tunes both the same way and measures both in the same
stage (prune.uniform_baseline). This reads every run's report.json and writes a Markdown table and a PNG plot:
each arm's test accuracy against the p50 at batch 1 its fine-tuned model measured in that stage (the latency its
choice was made on; latencies of different runs are different measurements), each point labelled with its run's
budget, each budget as a vertical line, the teacher as the first run's bench measured it and each distinct student
(distill.model) unpruned as the first run with it measured it. An arm that removed residual blocks
(prune.drop_blocks) says which. With prune.scratch_baseline, the shipped arm's architecture trained from scratch is
a row too, at that arm's latency (the same architecture), and "ships" says which of the two shipped; with
prune.alternatives, each other network trained whole is a row at its own measured latency ("whole"). Runs that
share an artifacts folder overwrite its release: copy release/report.json away after each run.

    python benchmarks/frontier.py runs/*/report.json --out benchmarks/frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from pipeline.reporting.plots import latency_at, new_figure

SCRATCH = "from scratch"  # the shipped arm's architecture trained from fresh weights
ALTERNATIVE = "whole"  # a network of prune.alternatives, trained whole
ACCURACIES = ("validation_accuracy", "test_accuracy")
ARM_STYLE = {
    "uniform": ("#2ca02c", "^"),
    "per_layer": ("#1f77b4", "o"),
    "sampled": ("#1f77b4", "o"),
    SCRATCH: ("#d62728", "s"),
    ALTERNATIVE: ("#9467bd", "D"),
}
ARM_LABELS = {
    SCRATCH: "shipped arm's architecture, from scratch",
    ALTERNATIVE: "another network whole (prune.alternatives)",
}


def read_report(path: Path) -> dict:
    """A run's report.json, or one line saying why it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {path}: not a readable report.json ({error})") from None


def arms(report: dict, path: Path) -> list[dict]:
    """The arms of a run's prune stage at its budget (the search's, and the uniform baseline's when it ran): what each
    kept, measured and scored after its fine-tune."""
    search = report.get("latency_search")
    if not search:
        raise SystemExit(
            f"error: {path}: the run had no latency search; run it with --set prune.target_latency_ms=BUDGET"
        )
    if "uniform_baseline" not in search:  # prune.uniform_baseline false: the search's arm is the fine-tuned model
        step = report["pruning"]["steps"][-1]
        finetuned = {"macs": step["macs"], **{key: step["after_finetune"][key] for key in ACCURACIES}}
        search = {**search, "finetuned": finetuned, "shipped": search["search"]}
    shipped_from = report["pruning"]["shipped"]  # "fine-tuned", "from scratch" or "alternative"
    rows = [
        {
            "budget_ms": search["budget_ms"],
            "student": report["config"]["distill"]["model"],
            "arm": name,
            "removed": arm["ratio"],
            "blocks": arm.get("dropped_blocks") or [],
            "macs": arm["finetuned"]["macs"],
            "latency_ms": arm["achieved"]["latency_ms"],
            "format": arm["achieved"]["format"],
            "validation": arm["finetuned"]["validation_accuracy"],
            "test": arm["finetuned"]["test_accuracy"],
            "shipped": search["shipped"] == name and shipped_from == "fine-tuned",
            "search_kept": search["shipped"] == name,  # this arm's architecture is the one that shipped
        }
        for name, arm in ((search["search"], search), ("uniform", search.get("uniform_baseline")))
        if arm is not None
    ]
    # With prune.scratch_baseline, the kept arm's architecture trained from fresh weights, at that arm's latency (the
    # same architecture); when it was the more accurate on validation, it shipped instead of the fine-tune.
    scratch = report["pruning"].get("scratch")
    kept = [{**row, "arm": SCRATCH, "validation": scratch["validation_accuracy"], "test": scratch["test_accuracy"],
             "shipped": shipped_from == "from scratch"} for row in rows if scratch and row["search_kept"]]  # fmt: skip
    # With prune.alternatives, each other network trained whole (untrained over the budget: not trained, no row).
    whole = [
        {"budget_ms": search["budget_ms"], "student": row["model"], "arm": ALTERNATIVE, "removed": 0.0, "blocks": [],
         "macs": row["macs"], "latency_ms": row["achieved_ms"], "format": row["format"],
         "validation": row["validation_accuracy"], "test": row["test_accuracy"], "shipped": row["shipped"],
         "search_kept": False}
        for row in report["pruning"].get("alternatives") or () if row["trained"]
    ]  # fmt: skip
    return rows + kept + whole


def references(reports: list[dict]) -> list[dict]:
    """The teacher as the first run's bench measured it, and each distinct student unpruned as the first run with it
    measured it (batch 1, the CPU)."""
    found = {}
    for report in reports:
        student = f"student {report['config']['distill']['model']}"
        for model in report["models"]:
            name = {"teacher": "teacher", "student": student}.get(model["name"])
            if name and name not in found and (latency := latency_at(model, "1")):
                found[name] = {"name": name, "latency_ms": latency["p50_ms"], "test": model["accuracy"]}
    return list(found.values())


def blocks_text(blocks: list[str]) -> str:
    return f"block{'s' * (len(blocks) > 1)} {', '.join(blocks)}"


def removed(row: dict) -> str:
    return f"{row['removed']:.1%}" + (f" and {blocks_text(row['blocks'])}" if row["blocks"] else "")


def table(rows: list[dict]) -> str:
    lines = [
        "| budget (ms) | student | arm | channels removed | MACs | p50 after fine-tune (ms), against the budget | form "
        "| validation | test | ships |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "met" if r["latency_ms"] <= r["budget_ms"] else "over"
        lines.append(
            f"| {r['budget_ms']:.4g} | {r['student']} | {r['arm']} | {removed(r)} | {r['macs'] / 1e6:.2f} M "
            f"| {r['latency_ms']:.4f}, {met} | {r['format']} | {r['validation']:.4f} | {r['test']:.4f} "
            f"| {'**yes**' if r['shipped'] else 'no'} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], refs: list[dict], machine: str, out: Path) -> None:
    fig, axes = new_figure(7.5, 4.8)
    ax = axes[0][0]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        color, marker = ARM_STYLE.get(arm, ("#8172b3", "s"))
        mine = [r for r in rows if r["arm"] == arm]  # one point per budget: runs apart, so not joined by a line
        ax.scatter([r["latency_ms"] for r in mine], [r["test"] for r in mine], marker=marker, color=color, s=50,
                   label=ARM_LABELS.get(arm, f"{arm} search, fine-tuned"), zorder=3)  # fmt: skip
        for r in mine:
            blocks = f", without {blocks_text(r['blocks'])}" if r["blocks"] else ""
            ax.annotate(f"{r['budget_ms']:.4g}{blocks}", (r["latency_ms"], r["test"]), xytext=(6, -10),
                        textcoords="offset points", fontsize=7, color=color)  # fmt: skip
    shipped = [(r["latency_ms"], r["test"]) for r in rows if r["shipped"]]
    ax.scatter(*zip(*shipped, strict=True), s=260, facecolors="none", edgecolors="#b8860b", label="shipped", zorder=4)
    for budget in sorted({r["budget_ms"] for r in rows}):
        ax.axvline(budget, color="#888", linestyle=":", zorder=1)
        ax.annotate(
            f"budget {budget:.4g}",
            (budget, 0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            xytext=(-10, 4),
            textcoords="offset points",
            fontsize=8,
            color="#555",
        )
    for ref in refs:
        ax.scatter(ref["latency_ms"], ref["test"], color="#444", marker="*", s=120, zorder=3)
        ax.annotate(ref["name"], (ref["latency_ms"], ref["test"]), xytext=(6, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.05, 0.1, 0.2, 0.5: labels inside one decade
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 0.2, not 2 x 10^-1
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor ticks crowd at these decades; labels on the major ones
    ax.set_xlabel("p50 at batch 1 (ms, onnxruntime CPU), as measured in each run")
    ax.set_ylabel("test accuracy")
    ax.set_title(machine, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report.json of one run per budget")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    reports = {path: read_report(path) for path in args.reports}
    rows = sorted(
        (row for path, r in reports.items() for row in arms(r, path)), key=lambda r: (-r["budget_ms"], r["arm"])
    )
    first = next(iter(reports.values()))
    machine = first["machine"]  # pipeline/runtime/environment.py identity(): the CPU's name and its family/model
    cpu = f"{machine['cpu']}, family/model/stepping {'/'.join(map(str, machine['cpu_family_model_stepping']))}"
    plot(rows, references(list(reports.values())), cpu, args.out)
    print(table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
