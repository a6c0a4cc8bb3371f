"""The report's words and table for depth pruning: the residual blocks prune.drop_blocks removed, and with auto
the per-layer search and fine-tune at each depth it tried (pipeline/training/prune_arms.py), for report.md and
report.html alike."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.latency_search_sections import table

DEPTH_HEADER = ["blocks removed", "channels removed", "MACs", "p50 ms (achieved)", "validation", "test", "kept"]


def depth_lines(depth: dict[str, Any] | None) -> list[str]:
    """The residual blocks prune.drop_blocks removed (none without it)."""
    if depth is None:
        return []
    steps = ", ".join(f"{b['block']} ({b['accuracy']:.4f})" for b in depth["blocks"]) or "none"
    shipped = "" if depth["shipped"] else " The uniform baseline's model shipped: it keeps every block."
    auto = ""
    if depth.get("arms") is not None:
        auto = (
            f" With auto, the depth that kept the most validation accuracy within the search's limit (else the "
            f"budget) after its own search and fine-tune, of {len(depth['arms'])} tried ({depth['stopped']}; the "
            "table under the latency search)."
        )
    return [
        f"- Depth (prune.drop_blocks): of {len(depth['droppable'])} residual blocks with an identity shortcut, removed "
        f"one at a time, each the one whose absence kept the most validation accuracy (BatchNorm re-estimated, no "
        f"fine-tune; the student {depth['before']['accuracy']:.4f}): {steps}.{auto}{shipped}"
    ]


def depth_arm_rows(depth: dict[str, Any]) -> list[list[str]]:
    """A row of cells per depth auto tried, shallowest first; one over the budget in its search was not fine-tuned
    (its p50 is the search's measurement of its candidate)."""
    rows = []
    for index, arm in enumerate(depth["arms"]):
        if arm.get("finetuned", True):
            cells = [f"{arm['macs']:,}", f"{arm['achieved_ms']:.4f} ({arm['format']})"]
            cells += [f"{arm['validation_accuracy']:.4f}", f"{arm['test_accuracy']:.4f}"]
        else:
            cells = ["–", f"{arm['achieved_ms']:.4f} (search, over the budget)", "not fine-tuned", "–"]
        kept = "yes" if index == depth["chosen"] else "no"
        rows.append([", ".join(arm["blocks"]) or "none", f"{arm['ratio']:.1%}", *cells, kept])
    return rows


def depth_arms_text(depth: dict[str, Any], budget_ms: float) -> str:
    return (
        f"The student was searched against the same {budget_ms:g} ms budget without 0, 1, ... of its residual blocks "
        "(in the order above), each depth pruned and fine-tuned alike; one whose search measured over the budget is "
        "fine-tuned only if no depth meets it. Kept for the comparison with the uniform search: the most accurate on "
        "validation of those within the search's limit, the budget less prune.search_margin (with none there, within "
        "the budget; the shallower on a tie; the fastest when none is). Stopped: "
        f"{depth['stopped']}. Test accuracy is reported, never chosen on."
    )


def depth_arms_section(depth: dict[str, Any] | None, budget_ms: float | None) -> list[str]:
    """report.md's table of auto's depths ([] without auto)."""
    if depth is None or depth.get("arms") is None or budget_ms is None:
        return []
    lines = ["", "### Depth against the budget (prune.drop_blocks: auto)", "", depth_arms_text(depth, budget_ms), ""]
    return lines + table(DEPTH_HEADER, depth_arm_rows(depth))
