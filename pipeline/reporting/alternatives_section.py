"""The report's words and table on prune.alternatives: each other network trained whole beside the pruned student
(pipeline/training/prune_alternatives.py), the pruned model's row beside them, and which shipped."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.html_figures import escape as _e
from pipeline.reporting.html_figures import table, table_rows
from pipeline.reporting.intervals import accuracy_text, both_splits_text
from pipeline.search import prune_budget
from pipeline.training.prune_alternatives import LABELS_ALONE, kept_run

ALTERNATIVES_HEADER = ["network", "params", "MACs", "p50 ms untrained", "p50 ms trained", "validation", "test", "ships"]


def pruned_architecture_best(pruning: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Of the pruned architecture's two models, the one the stage kept ("fine-tuned" or "from scratch": the more
    accurate on validation, the fine-tune on a tie) and its accuracies, whatever shipped in the end."""
    finetuned, scratch = pruning["after_finetune"], pruning["scratch"]
    if scratch is not None and scratch["validation_accuracy"] > finetuned["validation_accuracy"]:
        return "from scratch", scratch
    return "fine-tuned", finetuned


def pruned_is_alternative(report: dict[str, Any]) -> str:
    """One sentence under the models table when the model called "pruned" is one of prune.alternatives, not the
    student pruned ("" otherwise): the table's names say where each model came from, and that one did not."""
    pruning = report.get("pruning") or {}
    if pruning.get("shipped") != "alternative":
        return ""
    shipped = next(row for row in pruning["alternatives"] if row["shipped"])
    best = pruned_architecture_best(pruning)[1]["validation_accuracy"]
    kept = kept_run(shipped)  # the report's row has the record's shape
    labels = shipped["kept"] == LABELS_ALONE
    how = "on labels alone (more accurate on validation than distilled)" if labels else "with distillation"
    return (
        f"Pruned: {shipped['model']} trained whole from fresh weights {how} (prune.alternatives), not the "
        f"student pruned: more accurate on validation within {shipped_within(shipped)} "
        f"({kept['validation_accuracy']:.4f} against "
        f"{best:.4f} for the student pruned to it)."
    )


def widths_text(row: dict[str, Any]) -> str:
    """ " (auto: ...)" naming each width auto timed untrained, widest first, "" for a named network."""
    if not row.get("widths"):
        return ""
    timed = ", ".join(f"x{entry['width']} {entry['latency_ms']:.4f} ms" for entry in row["widths"])
    return f" (auto, the widest within {held_to(row)}, timed untrained: {timed})"


def shipped_within(row: dict[str, Any]) -> str:
    """What the alternative that ships (`row`) was within: the limit, or the budget when nothing was within that."""
    if row.get("limit_ms") is not None and row["achieved_ms"] > row["limit_ms"]:
        return "the budget (none measured within the limit)"
    return held_to(row)


def the_budget(row: dict[str, Any]) -> str:
    """The budget an alternative was decided against, in ms where recorded (prune VERSION 27: with the teacher
    timed again before the alternatives, it can be tighter than the one searched for)."""
    return "the budget" if row.get("budget_ms") is None else f"the budget ({row['budget_ms']:.4g} ms)"


def held_to(row: dict[str, Any]) -> str:
    """What an alternative was held to: the search's limit (prune VERSION 26), or the budget before."""
    if row.get("limit_ms") is None:
        return "the budget"
    return f"the limit ({row['limit_ms']:.4g} ms, the budget less prune.search_margin)"


def alternatives_lines(alternatives: list[dict[str, Any]] | None) -> list[str]:
    """report.md's line in "What each step bought": each network, trained whole or over the budget untrained."""
    if not alternatives:
        return []
    said = []
    for row in alternatives:
        if not row["trained"]:
            said.append(
                f"{row['model']}{widths_text(row)} measured {row['untrained_ms']:.4f} ms untrained, over "
                f"{the_budget(row)}: "
                "not trained"
            )
            continue
        ships = f", the most accurate on validation within {shipped_within(row)}, so it is the pruned model that ships"
        labels = row.get("without_teacher")  # distill.baseline: what the teacher bought it
        kept = ", more accurate on validation, so this one is kept" if row.get("kept") == LABELS_ALONE else ""
        said.append(
            f"{row['model']}{widths_text(row)} ({row['params']:,} params, {row['macs']:,} MACs) trained for "
            f"{row['epochs']} epochs "
            f"measured {row['achieved_ms']:.4f} ms {row['format']}: {both_splits_text(row)}"
            + (f"; on labels alone (no teacher, as many epochs) {both_splits_text(labels)}{kept}" if labels else "")
            + (ships if row["shipped"] else "")
        )
    return [
        "- Other networks trained whole from fresh weights with distillation, as the student was (prune.alternatives): "
        + "; ".join(said)
        + "."
    ]


def alternatives_rows(report: dict[str, Any]) -> list[list[str]]:
    """The pruned student's row (the searches' model as it shipped from its architecture), then each alternative's."""
    pruning, search = report["pruning"], report.get("latency_search") or {}
    how, scores = pruned_architecture_best(pruning)
    step = pruning["steps"][-1]
    rows = [
        [
            f"the student pruned ({how})",
            f"{step['params']:,}",
            f"{step['macs']:,}",
            "",
            f"{prune_budget.shipped_latency_ms(search):.4f}",
            accuracy_text(scores["validation_accuracy"], scores["validation_interval"]),
            accuracy_text(scores["test_accuracy"], scores["test_interval"]),
            "no" if pruning["shipped"] == "alternative" else "**yes**",
        ]
    ]
    for row in pruning["alternatives"]:
        trained = row["trained"]
        rows.append(
            [
                row["model"] + widths_text(row),
                f"{row['params']:,}",
                f"{row['macs']:,}",
                f"{row['untrained_ms']:.4f}",
                f"{row['achieved_ms']:.4f}" if trained else f"over {the_budget(row)}: not trained",
                accuracy_text(row["validation_accuracy"], row["validation_interval"]) if trained else "",
                accuracy_text(row["test_accuracy"], row["test_interval"]) if trained else "",
                "**yes**" if row["shipped"] and row.get("kept") != LABELS_ALONE else "no",
            ]
        )
        if labels := row.get("without_teacher"):  # distill.baseline: the same network on labels alone
            rows.append(
                [
                    f"{row['model']} on labels alone (no teacher)",
                    *[""] * 4,
                    accuracy_text(labels["validation_accuracy"], labels["validation_interval"]),
                    accuracy_text(labels["test_accuracy"], labels["test_interval"]),
                    "**yes**" if row["shipped"] and row["kept"] == LABELS_ALONE else "no",
                ]
            )
    return rows


def alternatives_section(report: dict[str, Any]) -> str:
    """report.html's table of the pruned student against prune.alternatives at the budget."""
    if not (report.get("pruning") or {}).get("alternatives"):
        return ""
    budget_ms = report["latency_search"]["budget_ms"]
    limit_ms = report["pruning"]["alternatives"][0].get("limit_ms")  # one limit for all of them
    if limit_ms is None:  # prune VERSION 25 and before: held to the budget
        rule = (
            "trained from fresh weights by the distill stage's recipe where it meets the budget, and timed again; the "
            "most accurate on validation within the budget ships, the pruned student on a tie."
        )
    else:
        rule = (
            f"auto's widest within the limit of {limit_ms:.4g} ms (the budget less prune.search_margin, headroom for "
            "the bench) trained from fresh weights by the distill stage's recipe where it meets the budget, and timed "
            "again; the most accurate on validation within the limit ships, else within the budget, the pruned "
            "student on a tie."
        )
    return (
        "<h2>The pruned student against other networks trained whole</h2>"
        f"<p>{_e(f'At the budget of {budget_ms:g} ms')}: each network of prune.alternatives is timed untrained "
        f"(weights do not change latency), {_e(rule)}</p>"
        + table(ALTERNATIVES_HEADER, table_rows(alternatives_rows(report)))
    )
