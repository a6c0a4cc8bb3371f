"""How fast could a student run on the target, before anything is trained: `edgeforge floor`.

Weights do not change latency, architecture does; so an untrained student, exported and timed as the prune
search times its candidates (pipeline/search/prune_candidates.py: deployed form, prune.target_* settings), tells in
a few minutes what the prune stage learns only after the teacher and the student have trained:
- unpruned: the student as distill.model and distill.width build it;
- floor: every prunable group at its fewest channels (prune.round_to), the fastest any pruning of it reaches.

Pruning thins channels; it keeps every operator and every feature map's size, so at batch 1 the floor is often far
above zero (on the Xeon of BENCHMARKS.md CIFAR-10's resnet8 measured 0.10-0.15 ms at its floor in three runs, for
15% of its MACs, against 0.14-0.19 ms unpruned). A budget under the student's floor fails the sign-off however the
search prunes; this says so before the training (`edgeforge floor`, and `floor_check` before a run trains).

With prune.drop_blocks N, each student is measured with its first N droppable residual blocks removed (as many as
it has; never the teacher, whose latency the budget is a fraction of). With auto and a budget, each student with
such blocks is measured whole and without all of them: the first depth the stage tries and the deepest it may.
Which N the prune stage removes is chosen on validation after training, and at equal MACs the earlier blocks run
on larger maps, so this is a guide's best case, not a promise.

Every model and form is measured in interleaved rounds (prune.search_repeats of them): a 2-core VM drifts by up to
1.4x over seconds (the same session, 0.066 or 0.090 ms), so back-to-back measurements of one model and then
another would compare the drift, not the models.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.datasets.artifact import Dataset
from pipeline.errors import ConfigError
from pipeline.models.cifar import STRIDED_STEM
from pipeline.models.depth import AUTO, blocks_asked, drop_blocks, droppable_blocks
from pipeline.models.factory import build_model, check_model_name, published_width
from pipeline.search import prune_budget, prune_candidates
from pipeline.search.prune_layer_table import prunable_groups
from pipeline.search.prune_layers import full_channels, share_removed
from pipeline.search.prune_ratio import search_limit
from pipeline.training import prune_alternatives
from pipeline.training.recipes import model_label, spec_for

FORMS = ("unpruned", "floor")
ALTERNATIVE = "alternative"  # the role of prune.alternatives' rows

log = logging.getLogger(__name__)


def parse_model(text: str) -> tuple[str, int | None]:
    """'NAME' (its published width) or 'NAME@WIDTH' -> (name, width), or a one-line ConfigError."""
    name, at, width = text.partition("@")
    check_model_name("--model", name)
    if not at:
        return name, published_width(name)
    if not width.isdigit() or int(width) < 1 or ":" in name:
        fix = "an integer >= 1 after @" if ":" not in name else "no @WIDTH: a library's or user's model has its own"
        raise ConfigError(f"--model={text!r}: expected NAME or NAME@WIDTH ({fix})")
    return name, int(width)


def students(teacher: Any, distill: Any, prune: Any, extra: tuple[str, ...]) -> list[tuple[str, str, int | None]]:
    """(role, model, width) of every model to measure: the student, then each --model, then the teacher (the
    budget as a fraction of it). With no --model: prune.alternatives at every width the prune stage may time them
    (auto: the stride-2 variant from twice the student's width to half of it), so the table shows which one a
    budget trains; without alternatives, the student's stride-2 variant when it has one."""
    rows = [("student", distill.model, distill.width)]
    rows += [("asked", *parse_model(text)) for text in extra]
    if not extra:
        alternatives = prune_alternatives.resolve(prune.alternatives, distill.model, distill.width, prune.round_to)
        rows += [(ALTERNATIVE, name, width) for name, widths in alternatives for width in widths]
        if not alternatives and distill.model in STRIDED_STEM:
            rows.append(("stride-2 variant", f"{distill.model}_s2", distill.width))
    if teacher.onnx is None:
        rows.append(("teacher", teacher.model, teacher.width))
    return rows


def measured_models(models: list[tuple[str, str, int | None]], dataset: Dataset, prune: Any) -> list:
    """measured_student of each of `models`; under auto, a student whose blocks may go is measured whole first.
    An alternative only whole: the prune stage trains it whole."""
    measured = []
    for model in models:
        deepest = measured_student(*model, dataset, prune, dropped=[] if model[0] == ALTERNATIVE else None)
        if prune.drop_blocks == AUTO and deepest[0]["dropped_blocks"]:
            measured.append(measured_student(*model, dataset, prune, dropped=[]))
        measured.append(deepest)
    return measured


def measured_student(
    role: str, name: str, width: int | None, dataset: Dataset, prune: Any, dropped: list[str] | None = None
):
    """(the row of one model, its candidates measurer, {form: prune setting}); the floor has every prunable group
    at the fewest channels the prune search may leave it (its candidate counts' last). `dropped`: the residual
    blocks removed; by default those prune.drop_blocks asks for (none from the teacher)."""
    spec = spec_for(dataset, name, width)
    model = build_model(spec).eval()
    if dropped is None:
        asked = blocks_asked(prune.drop_blocks, droppable_blocks(model), prune.target_latency_ms)
        dropped = asked if role != "teacher" else []
    drop_blocks(model, dropped)
    groups = prunable_groups(model, spec, prune)
    floor = {group.name: group.counts[-1] for group in groups}
    label = model_label(name, width) + (f" -{len(dropped)} block{'s' * (len(dropped) > 1)}" if dropped else "")
    row = {"role": role, "name": name, "model": label, "runs": {}, "dropped_blocks": dropped}
    row["droppable"] = len(droppable_blocks(model))  # what is left to drop
    row["floor_removed"] = share_removed(full_channels(groups), floor) if groups else 0.0
    return row, prune_budget.candidates(model, spec, dataset, prune), {"unpruned": {}, "floor": floor}


def timed_rounds(measured: list, forms: tuple[str, ...], rounds: int) -> list[dict[str, Any]]:
    """The rows of `measured` (measured_student's) with each form timed in `rounds` interleaved rounds: every
    model and form once per round. A model with nothing to prune has its floor setting equal to its unpruned one,
    so its floor is the same files timed again. "fastest_ms": its fastest round in any form: a small model can run
    slower at its floor than unpruned (on digits the cnn x8 measured 0.0154 ms at its floor, 0.0145 unpruned)."""
    try:
        for _ in range(rounds):
            for row, candidates, settings in measured:
                for form in forms:
                    result = candidates(settings[form])
                    row["runs"].setdefault(form, []).append(result["latency_ms"])
                    row[f"{form}_format"], row[f"{form}_macs"] = result["format"], result["macs"]
    finally:
        for _, candidates, _ in measured:
            candidates.close()
    for row, _, _ in measured:
        for form in forms:
            row[f"{form}_ms"] = float(np.median(row["runs"][form]))
        row["floor_fastest_ms"] = min(row["runs"]["floor"]) if "floor" in row["runs"] else None
        row["fastest_ms"] = min(min(row["runs"][form]) for form in forms)
    return [row for row, _, _ in measured]


def measure(dataset: Dataset, models: list[tuple[str, str, int | None]], prune: Any) -> dict[str, Any]:
    """{"rows": one per model of `models` (students') with its unpruned and floor latencies (median and range over
    the rounds), "method", "budget_ms", "verdict"}; nothing is trained or written."""
    rows = timed_rounds(measured_models(models, dataset, prune), FORMS, prune.search_repeats)
    budget = prune.target_latency_ms
    return {
        "rows": rows,
        "method": {**prune_candidates.method(prune), "rounds": prune.search_repeats, "weights": "untrained"},
        "budget_ms": budget,
        "margin": prune.search_margin,
        "verdict": None if budget is None else verdict(rows, budget, prune.search_margin),
    }


def verdict(rows: list[dict[str, Any]], budget_ms: float, margin: float) -> dict[str, Any]:
    """Whether the student can reach `budget_ms` as the prune search decides it (a candidate must measure
    <= budget * (1 - margin)): {"reachable": bool, "message": one line, "faster": the other models that can}.

    Unreachable means every round of the student, unpruned and at its floor, measured over the limit. This VM's
    drift (up to 1.4x over seconds) can put a median over it that a quieter moment meets; that is said, not failed.
    Under auto the student has two rows, whole and without its blocks; the verdict speaks of the shallower that
    reaches the budget by its median, else by its fastest round, else of the deepest."""
    limit = search_limit(budget_ms, margin)
    mine = [row for row in rows if row["role"] == "student"]
    student = next((row for row in mine if min(row["unpruned_ms"], row["floor_ms"]) <= limit), None) or next(
        (row for row in mine if row["fastest_ms"] <= limit), mine[-1]
    )
    offered = [row for row in rows if row["role"] not in ("student", "teacher")]  # the students one could train instead
    can = [row for row in offered if row["fastest_ms"] <= limit]
    others = ", ".join(
        f"{row['model']} (floor {row['floor_ms']:.4f} ms, {row['fastest_ms']:.4f} fastest)" for row in can
    )
    floor = f"its floor measured {student['floor_ms']:.4f} ms ({student['floor_fastest_ms']:.4f} in its fastest round)"
    if student["unpruned_ms"] <= limit and student is not mine[0]:
        message = (
            f"{student['model']} meets it unpruned ({student['unpruned_ms']:.4f} ms), the whole student does not: "
            "prune.drop_blocks auto tries each depth"
        )
    elif student["unpruned_ms"] <= limit:
        message = f"{student['model']} meets it unpruned ({student['unpruned_ms']:.4f} ms): a larger student may fit"
        larger = [row for row in offered if row["unpruned_macs"] > student["unpruned_macs"]]
        fits = [f"{row['model']} ({row['unpruned_ms']:.4f} ms)" for row in larger if row["unpruned_ms"] <= limit]
        message += f"; these larger ones meet it unpruned: {', '.join(fits)}" if fits else ""
        # The teacher is no student to offer, but a budget it meets asks for no compression: say so.
        teacher = next((row for row in rows if row["role"] == "teacher" and row["unpruned_ms"] <= limit), None)
        message += f"; the teacher itself meets it ({teacher['unpruned_ms']:.4f} ms)" if teacher else ""
    elif student["floor_ms"] <= limit:
        message = (
            f"{student['model']} reaches it by pruning: {floor}, {student['floor_removed']:.0%} of the channels removed"
        )
    else:
        reach = "reaches it only in its fastest rounds" if student["fastest_ms"] <= limit else "cannot reach it"
        message = (
            f"{student['model']} {reach}: {floor} with {student['floor_removed']:.0%} of the channels removed, "
            f"against {limit:.4f} ms; {prune_budget.lower_floor(student['name'], student['droppable'])}"
            + (f"; these reach it: {others}" if others else "")
        )
    reachable = student["fastest_ms"] <= limit
    # As the prune stage decides (prune_alternatives.widest_within): of each alternative's widths, timed widest first,
    # the first within the search's limit is trained, or with none there the narrowest when within the budget.
    widths: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["role"] == ALTERNATIVE:
            widths.setdefault(row["name"], []).append(row)
    trains: dict[str, str] = {}
    for name, timed in widths.items():
        chosen = next((row for row in timed if row["unpruned_ms"] <= limit), timed[-1])
        if chosen["unpruned_ms"] <= budget_ms:
            trains[name] = chosen["model"]
    faster = [row["model"] for row in can]
    return {
        "reachable": reachable,
        "limit_ms": limit,
        "message": message,
        "faster": faster,
        "trains": list(trains.values()),
    }


def floor_check(dataset: Dataset, distill: Any, prune: Any, distilled: bool = False) -> str | None:
    """Before a student is trained (or, `distilled`, pruned) for prune.target_latency_ms: None when it measured
    within the limit, at its floor or unpruned, in at least one of prune.search_repeats rounds, else the one line that
    says it cannot reach the budget. The floor is timed first, and the unpruned student only when the floor misses (a
    small model can run faster unpruned): a best-of question, so the two need not be interleaved. A few seconds a
    round: the check costs little next to the training it may save."""

    def timed(form: str) -> dict[str, Any]:
        student = measured_student("student", distill.model, distill.width, dataset, prune)
        row = timed_rounds([student], (form,), prune.search_repeats)[0]
        runs = ", ".join(f"{ms:.4f}" for ms in row["runs"][form])
        log.info("floor check: %s %s measured %s ms against %.4f ms", row["model"], form, runs, limit)
        return row

    limit = search_limit(prune.target_latency_ms, prune.search_margin)
    floor = timed("floor")
    if floor["fastest_ms"] <= limit or (unpruned := timed("unpruned"))["fastest_ms"] <= limit:
        return None
    return (
        f"prune.target_latency_ms={prune.target_latency_ms}: {floor['model']} cannot reach it: its floor "
        f"({floor['floor_removed']:.0%} of the channels removed, untrained) measured {floor['floor_ms']:.4f} ms, "
        f"{floor['fastest_ms']:.4f} in its fastest of {prune.search_repeats} rounds (unpruned "
        f"{unpruned['unpruned_ms']:.4f} ms), against {limit:.4f} ms after prune.search_margin; "
        f"{prune_budget.lower_floor(floor['name'], floor['droppable'])} (`edgeforge floor --model NAME` measures "
        f"others), or pass --skip-floor-check to {'prune' if distilled else 'train'} it anyway"
    )


def variant_advice(dataset: Dataset, distill: Any, prune: Any) -> str | None:
    """Before a student is trained for prune.target_latency_ms that it meets only pruned: its stride-2 variant
    (when it has one), timed unpruned beside it in interleaved rounds; one line when the variant meets the budget
    with every channel and the whole student does not, else None. A warning, not a failure: the student is the
    user's choice. At half resnet8's latency on an Intel Xeon with AMX, resnet8 pruned to it (a block and 69% of
    its channels) left 0.64 test accuracy fine-tuned (0.66 trained from scratch) where its stride-2 variant needs
    no pruning (BENCHMARKS.md, "Half the student on a CPU with AMX")."""
    if distill.model not in STRIDED_STEM:
        return None
    limit = search_limit(prune.target_latency_ms, prune.search_margin)
    models = (("student", distill.model), ("stride-2 variant", f"{distill.model}_s2"))
    measured = [measured_student(role, name, distill.width, dataset, prune, dropped=[]) for role, name in models]
    student, variant = timed_rounds(measured, ("unpruned",), prune.search_repeats)
    for row in (student, variant):
        runs = ", ".join(f"{ms:.4f}" for ms in row["runs"]["unpruned"])
        log.info("floor check: %s unpruned measured %s ms against %.4f ms", row["model"], runs, limit)
    if student["unpruned_ms"] <= limit or variant["unpruned_ms"] > limit:
        return None
    return (
        f"prune.target_latency_ms={prune.target_latency_ms}: {student['model']} meets it only pruned (unpruned "
        f"{student['unpruned_ms']:.4f} ms against {limit:.4f} ms after prune.search_margin), its stride-2 variant "
        f"{variant['model']} with every channel ({variant['unpruned_ms']:.4f} ms): --set "
        f"distill.model={variant['name']} may keep more accuracy than pruning (`edgeforge floor` measures both)"
    )


def alternatives_within(dataset: Dataset, distill: Any, prune: Any) -> list[str]:
    """prune.alternatives (resolved against the student) whose deployed form, untrained, measured within
    prune.target_latency_ms in at least one of prune.search_repeats interleaved rounds, as 'MODEL (ms)': the prune
    stage trains those whole (pipeline/training/prune_alternatives.py), so a student that cannot reach the budget
    need not fail the run."""
    models = prune_alternatives.resolve(prune.alternatives, distill.model, distill.width, prune.round_to)
    if not models:
        return []
    # Of a network's widths (auto's several) the narrowest, the fastest: whether any of them can be trained.
    measured = [measured_student("alternative", name, widths[-1], dataset, prune, []) for name, widths in models]
    rows = timed_rounds(measured, ("unpruned",), prune.search_repeats)
    budget_ms = prune.target_latency_ms
    return [f"{row['model']} ({row['fastest_ms']:.4f} ms)" for row in rows if row["fastest_ms"] <= budget_ms]


def format_floors(result: dict[str, Any]) -> str:
    """The table and verdict `edgeforge floor` prints."""
    method = result["method"]
    lines = [
        f"untrained models on {method['device']} ({method['provider']}, batch {method['batch']}, "
        f"{method['settings']}, p50 median of {method['rounds']} interleaved rounds, range in brackets)",
        f"{'role':<17} {'model':<24} {'unpruned ms':<31} {'floor ms':<31} removed",
    ]
    for row in result["rows"]:
        cells = []
        for form in FORMS:
            runs = row["runs"][form]
            cells.append(f"{row[f'{form}_ms']:.4f} [{min(runs):.4f}-{max(runs):.4f}] {row[f'{form}_format']}")
        lines.append(f"{row['role']:<17} {row['model']:<24} {cells[0]:<31} {cells[1]:<31} {row['floor_removed']:.0%}")
    if result["verdict"] is not None:
        said, budget = result["verdict"], result["budget_ms"]
        # Out of reach, the command's error line says why; the table does not say it twice.
        verdict_text = said["message"] if said["reachable"] else "out of reach"
        from_teacher = result.get("budget_from_teacher")
        source = (
            ""
            if from_teacher is None
            else f", the teacher's fastest timing {from_teacher['fastest_ms']:.4f} ms / {from_teacher['speedup']:g}"
        )
        lines.append(
            f"budget {budget:.4g} ms ({said['limit_ms']:.4f} after prune.search_margin{source}): {verdict_text}"
        )
        if any(row["role"] == ALTERNATIVE for row in result["rows"]):
            trains = ", ".join(said["trains"]) or "none (none of them measured within the budget unpruned)"
            rule = "the widest within the search's limit, else the narrowest within the budget"
            lines.append(f"prune.alternatives the prune stage would train ({rule}): {trains}")
    else:
        lines.append("no prune.target_latency_ms or target_speedup_vs_teacher set: nothing to check against")
    return "\n".join(lines) + "\n"
