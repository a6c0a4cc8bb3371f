"""The timings the prune stage took again because they measured over the budget (pipeline/search/retime.py): what
was timed, every round in order, and the timing that decided, gathered from the stage's record for report.json and
said in report.md and report.html."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.html_figures import escape as _e
from pipeline.training.recipes import model_label

HOW = (
    "a search's configurations: over its limit, the budget less prune.search_margin; prune.retime_rounds, "
    "prune.retime_gap_s apart: a slow episode of the host only slows, so the fastest decides"
)


def gathered(prune: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"what", "rounds_ms", "gap_s", "limit_ms", "decided_ms"}] of every timing taken again ("limit_ms" absent in
    prune entries from before it: the budget): the searches' configurations (the chosen arm's search, the uniform
    one's), the depth arms after their fine-tune (or the one pruned model), the uniform baseline's model, then each
    alternative untrained and trained."""
    found: list[dict[str, Any]] = []

    def add(what: str, again: dict[str, Any] | None, decided_ms: float) -> None:
        if again:
            found.append({"what": what, **again, "decided_ms": decided_ms})

    search = prune.get("latency_search") or {}
    uniform = search.get("uniform_baseline")
    for name, decided in ((search.get("search", "uniform"), search), ("uniform", uniform or {})):
        for entry in decided.get("trace") or ():  # the searches' configurations near their limit (`reaching`)
            what = f"the {name.replace('_', '-')} search's configuration with {entry['ratio']:.1%} of channels removed"
            add(what, entry.get("timed_again"), entry["latency_ms"])
    arms = (prune.get("depth") or {}).get("arms")
    for arm in arms or ():
        add(
            f"the arm without {len(arm['blocks'])} block(s) after its fine-tune",
            arm.get("timed_again"),
            arm["achieved_ms"],
        )
    if search and not arms:
        add(
            "the pruned model after its fine-tune",
            search["achieved"].get("timed_again"),
            search["achieved"]["latency_ms"],
        )
    if uniform and not uniform.get("same_model"):
        achieved = uniform["achieved"]
        add("the uniform search's model after its fine-tune", achieved.get("timed_again"), achieved["latency_ms"])
    for record in prune.get("alternatives") or ():
        widths = record.get("widths") or [{**record["untrained"], "width": record["width"]}]
        for width in widths:
            what = f"{model_label(record['name'], width['width'])} untrained"
            add(what, width.get("timed_again"), width["latency_ms"])
        if record["trained"]:
            what = f"{record['model']} trained"
            add(what, record["achieved"].get("timed_again"), record["achieved"]["latency_ms"])
    return found


def timed_again_text(found: list[dict[str, Any]], budget_ms: float) -> str:
    """ "WHAT X, then Y, Z ms, G s apart (Z decided[, over LIMIT]); ..." of `gathered`'s list: LIMIT is what the
    rounds were held against, the budget or a search's limit."""
    said = []
    for entry in found:
        first, *later = entry["rounds_ms"]
        rounds = ", ".join(f"{ms:.4f}" for ms in later)
        limit_ms = entry.get("limit_ms", budget_ms)
        over = f", over {limit_ms:.4g}" if entry["decided_ms"] > limit_ms else ""
        said.append(
            f"{entry['what']} {first:.4f}, then {rounds} ms, {entry['gap_s']:g} s apart "
            f"({entry['decided_ms']:.4f} decided{over})"
        )
    return "; ".join(said)


def timed_again_lines(report: dict[str, Any]) -> list[str]:
    """report.md's line in "What each step bought" ([] when nothing was timed again)."""
    found = (report.get("pruning") or {}).get("timed_again")  # absent in reports before VERSION 34
    if not found:
        return []
    budget_ms = report["latency_search"]["budget_ms"]
    return [f"- Timed again while over the budget of {budget_ms:g} ms ({HOW}): {timed_again_text(found, budget_ms)}."]


def timed_again_section(report: dict[str, Any]) -> str:
    """report.html's paragraph of the same ("" when nothing was timed again)."""
    lines = timed_again_lines(report)
    if not lines:
        return ""
    return f"<h2>Timed again while over the budget</h2><p>{_e(lines[0].removeprefix('- '))}</p>"
