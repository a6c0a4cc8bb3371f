"""The prune stage's other networks (prune.alternatives): with a latency budget, a network that is fast by
construction, trained whole, may keep more accuracy than the student cut down to the budget.

Pruning removes channels and blocks and keeps every operator and every feature map's size; a stride-2 stem runs
every layer after it on a quarter of the pixels. At half resnet8's latency on an Intel Xeon with AMX (BENCHMARKS.md,
"Half the student on a CPU with AMX"), resnet8 pruned to it (a block and 69% of its channels) kept 0.64 test accuracy,
0.66 with its architecture trained from scratch, where resnet8_s2, distilled whole, met the same budget at 0.77. At
0.09 ms the pruned resnet8 was the more accurate. So which ships is measured, not assumed:
- each alternative is built and its deployed form timed as the search times its candidates (prune.target_*
  settings), untrained: weights do not change latency. One over the budget whole is not trained (pruning it is a run
  of its own: distill.model), and the record says what it measured;
- auto, the student's stride-2 variant, is timed at widths from twice the student's down to half of it (multiples of
  prune.round_to), and the widest within the search's limit is the one trained: at equal training a wider network
  keeps more accuracy (on CIFAR-10, resnet8_s2 distilled 10 epochs: 0.8168 validation at width 32, 0.7974 at 16),
  and a narrower one reaches tighter budgets. Within the search's limit (the budget less prune.search_margin), as
  the searches' candidates: the stage keeps a network's fastest timing (pipeline/search/retime.py) and the bench's
  bound gate reads its slowest round, so one at the budget fails there. On CIFAR-10 resnet8_s2 x24 was trained at
  0.0689 and then 0.0715 ms untrained against budgets of 0.0720 and 0.0771: the first time it measured 0.0739
  trained and did not ship, the second it shipped at 0.0732 and its slowest bench round, 0.0778 ms, failed the
  0.0679 ms gate (BENCHMARKS.md, "A host at two speeds" and "The profile at prune VERSION 25"). None within the
  limit: the narrowest, trained when within the budget. One that measures over the limit once trained falls back
  to the narrower widths, and the widest of those within the limit is trained in turn;
- one within it is trained from fresh weights by the distill stage's recipe, feature loss included, for as many
  epochs as the student had in distill and the fine-tune (prune.scratch_epochs when set), then timed again; with
  distill.baseline, also from the same weights on labels alone, so the report says what the teacher bought it, and
  that one is kept when it is more accurate on validation (a teacher little better than the network can hold it
  back: on CIFAR-10, resnet8_s2 x16 reached 0.8128 validation on labels alone in 25 epochs, 0.8054 distilled);
- of the pruned model and the trained alternatives, the most accurate on validation among those that measured
  within the limit ships, else among those within the budget, the pruned model on a tie (prune_budget.shipped_arm,
  as for the searches' arms, with the limit first).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.datasets.artifact import Dataset
from pipeline.errors import ConfigError
from pipeline.models.cifar import STRIDED_STEM
from pipeline.models.depth import AUTO
from pipeline.models.factory import MODELS, build_model, count_macs_and_params, published_width
from pipeline.search import prune_budget
from pipeline.training.prune_finetune import train_from_scratch
from pipeline.training.recipes import DISTILLED, LABELS_ALONE, kept_run_name, model_label, spec_for

PRUNED = "pruned"  # the pruned student's arm in the shipping decision
EXPECTED = "auto (the student's stride-2 variant), or built-in models as NAME or NAME@WIDTH, or null (none)"
AUTO_WIDTH_FACTORS = (2.0, 1.5, 1.0, 0.75, 0.5)  # auto's widths, times the student's, widest first

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Alternative:
    """One alternative network: its record (what the report shows) and, once trained, the model and its spec."""

    record: dict[str, Any]
    model: torch.nn.Module | None = None
    spec: Any = None


def parse(entry: str) -> tuple[str, int | None] | None:
    """'auto' -> None (resolved against the student: `resolve`), 'NAME' or 'NAME@WIDTH' -> (name, width), else a
    one-line ConfigError naming the entry."""
    if entry == AUTO:
        return None
    name, at, width = entry.partition("@")
    if name not in MODELS or at and not (width.isdigit() and int(width) >= 1):
        raise ConfigError(
            f"prune.alternatives: {entry!r} is not one; expected {EXPECTED} (built-in: {', '.join(MODELS)})"
        )
    return name, int(width) if at else published_width(name)


def auto_widths(width: int, round_to: int) -> tuple[int, ...]:
    """auto's widths for a student of `width`: AUTO_WIDTH_FACTORS of it, each a multiple of `round_to` (at least
    one multiple; 0: any count), widest first, without repeats."""
    step = round_to or 1
    return tuple(
        sorted({max(step, round(width * factor / step) * step) for factor in AUTO_WIDTH_FACTORS}, reverse=True)
    )


def resolve(
    entries: tuple[str, ...] | None, student: str, student_width: int | None, round_to: int
) -> list[tuple[str, tuple[int | None, ...]]]:
    """(name, widths) of each alternative, its widths widest first: one for a named network; auto is the student's
    stride-2 variant at auto_widths of the student's (nothing for a student without one). Repeats and the student
    itself at its own width are left out."""
    found: list[tuple[str, tuple[int | None, ...]]] = []
    for entry in entries or ():
        parsed = parse(entry)
        if parsed is None and student in STRIDED_STEM:
            width = student_width or published_width(student)
            found.append((f"{student}_s2", auto_widths(width, round_to)))
        elif parsed is not None and parsed != (student, student_width):
            found.append((parsed[0], (parsed[1],)))
    return list(dict.fromkeys(found))  # repeats go, the first's place kept


def against_pruned(
    search: dict[str, Any] | None,
    spec,
    pruned_validation: float,
    teacher: torch.nn.Module,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
) -> tuple[list[Alternative] | None, Alternative | None]:
    """With a budget (`search`, the searches' decision) and prune.alternatives: each alternative of the student
    (`spec`) timed, trained when within the budget, and the one that ships over the pruned model (validation accuracy
    `pruned_validation`), or None. Without either: (None, None)."""
    models = resolve(params.alternatives, spec.name, spec.width, params.round_to)
    if search is None or not models:  # to_decide's test, on the list resolved once
        return None, None
    alternatives = trained_within_budget(models, teacher, dataset, params, distill_params, out_dir)
    pruned_ms = prune_budget.shipped_latency_ms(search)
    # params' budget, not the search's: with prune.target_speedup_vs_teacher the teacher is timed again before this
    # decision (teacher_budget.before_alternatives), and its budget can be tighter than the one searched for.
    budget_ms = params.target_latency_ms
    return alternatives, more_accurate(
        alternatives, pruned_ms, pruned_validation, budget_ms, prune_budget.limit_ms(params)
    )


def to_decide(search: dict[str, Any] | None, spec, params: Any) -> bool:
    """Whether against_pruned has alternatives to time and train: a budget searched for (`search`) and at least one
    network in prune.alternatives that is not the student (`spec`) itself."""
    return search is not None and bool(resolve(params.alternatives, spec.name, spec.width, params.round_to))


def trained_within_budget(
    models: list[tuple[str, tuple[int | None, ...]]],
    teacher: torch.nn.Module,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
) -> list[Alternative]:
    """Each of `models` timed untrained (at each of its widths, widest first, until one is within the search's
    limit: `widest_within`) and, within the budget, trained and timed again. One that measures over the limit
    trained falls back to its narrower widths, timed and trained the same way: on CIFAR-10 auto's resnet8_s2 x24
    measured 0.0689 ms untrained and 0.0739 at its fastest of five rounds trained, against a budget of 0.0720, and
    nothing narrower was trained (BENCHMARKS.md, "A host at two speeds")."""
    limit_ms, found = prune_budget.limit_ms(params), []
    for index, (name, widths) in enumerate(models):
        left, run = widths, f"alternative-{index}"
        while left:
            alternative, timed = trained_at_widest(
                name, left, len(widths) > 1, teacher, dataset, params, distill_params, out_dir, run
            )
            found.append(alternative)
            left = left[len(timed) :]  # the narrower widths, not timed yet
            record = alternative.record
            if not record["trained"] or record["achieved"]["latency_ms"] <= limit_ms or not left:
                break
            log.info("prune: %s trained measured over the limit: its narrower widths next", record["model"])
            run = f"alternative-{index}-x{left[0]}"  # checkpoints of its own
    return found


def trained_at_widest(
    name: str,
    widths: tuple[int | None, ...],
    auto: bool,
    teacher: torch.nn.Module,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
    run: str,
) -> tuple[Alternative, list[dict[str, Any]]]:
    """`name` at the widest of `widths` within the search's limit (`widest_within`), trained when within the budget
    as `run` (its checkpoints' name) and timed again; and every width timed. `auto`: the record lists the widths
    timed."""
    budget_ms, limit_ms = params.target_latency_ms, prune_budget.limit_ms(params)
    model, spec, untrained, timed = widest_within(name, widths, dataset, params, distill_params["seed"])
    macs, n_params = count_macs_and_params(model, spec)
    record = {"model": model_label(name, spec.width), "name": name, "width": spec.width}
    record.update(budget_ms=budget_ms, limit_ms=limit_ms)
    record.update(macs=macs, params=n_params, untrained=untrained, trained=untrained["latency_ms"] <= budget_ms)
    record.update(widths=timed if auto else None, shipped=False)
    if not record["trained"]:
        return Alternative(record), timed
    record.update(train_from_scratch(model, spec, teacher, dataset, params, distill_params, out_dir, run))
    record["achieved"] = prune_budget.achieved(model, spec, dataset, params, limit_ms)
    record["kept"] = DISTILLED
    if distill_params["baseline"]:  # what the teacher bought the network that may ship, as for the student
        labels_model, record["without_teacher"] = without_teacher(
            record, model, spec, dataset, params, distill_params, out_dir, f"{run}-labels"
        )
        # The more accurate run is kept: on CIFAR-10 from the shortened profile's 8-epoch teacher, labels alone won
        # at 25 epochs (BENCHMARKS.md).
        labels_validation = record["without_teacher"]["validation_accuracy"]
        record["kept"] = kept_run_name(record["validation_accuracy"], labels_validation)
        model = labels_model if record["kept"] == LABELS_ALONE else model
    return Alternative(record, model, spec), timed


def kept_run(record: dict[str, Any]) -> dict[str, Any]:
    """Of a trained alternative's runs, the one kept (its accuracies): distilled, or on labels alone when that won."""
    return record["without_teacher"] if record.get("kept") == LABELS_ALONE else record


def without_teacher(
    record: dict[str, Any],
    distilled: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
    name: str,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The alternative (`record`, trained: `distilled`) from the same fresh weights (distill.seed), trained as many
    epochs on labels alone: no teacher, no feature loss (distill.baseline's comparison). (The model, {epochs,
    accuracies, history}.)"""
    if distill_params["alpha"] == 0 and distill_params["feature_loss"] == "none":  # it learned from labels alone
        # Its scores, not a second copy of its curve (distill's baseline_history is None alike)
        return distilled, {
            **{key: record[key] for key in ("epochs", "validation_accuracy", "test_accuracy")},
            "history": None,
        }
    torch.manual_seed(distill_params["seed"])
    model = build_model(spec)
    labels_only = {**distill_params, "alpha": 0.0, "feature_loss": "none"}
    return model, train_from_scratch(model, spec, None, dataset, params, labels_only, out_dir, name)


def widest_within(name: str, widths: tuple[int | None, ...], dataset: Dataset, params: Any, seed: int):
    """`name` built (fresh weights, `seed`) and timed untrained at each of `widths` (widest first) until one
    measures within the search's limit (`limit`); none within it: the narrowest. (Model, spec, its measurement,
    [{width, latency_ms}] of every width timed.)"""
    limit_ms, timed = prune_budget.limit_ms(params), []
    for width in widths:
        spec = spec_for(dataset, name, width)
        torch.manual_seed(seed)
        model = build_model(spec)
        untrained = prune_budget.achieved(model, spec, dataset, params, limit_ms)
        log.info(
            "prune: alternative %s untrained measured %.4f ms against %.4g (the budget %g less prune.search_margin)",
            model_label(name, width),
            untrained["latency_ms"],
            limit_ms,
            params.target_latency_ms,
        )
        timed.append({"width": width, "latency_ms": untrained["latency_ms"]})
        if "timed_again" in untrained:  # over the limit at first (pipeline/search/retime.py)
            timed[-1]["timed_again"] = untrained["timed_again"]
        if untrained["latency_ms"] <= limit_ms:
            break
    return model, spec, untrained, timed


def more_accurate(
    alternatives: list[Alternative], pruned_ms: float, pruned_validation: float, budget_ms: float, limit_ms: float
):
    """The alternative that ships over the pruned model (`pruned_ms`, `pruned_validation`: its achieved latency and
    validation accuracy), or None: the most accurate on validation within `limit_ms`, else within the budget, the
    pruned model on a tie."""
    trained = {a.record["model"]: a for a in alternatives if a.model is not None}
    arms = {PRUNED: (pruned_ms, pruned_validation)}
    arms |= {
        label: (a.record["achieved"]["latency_ms"], kept_run(a.record)["validation_accuracy"])
        for label, a in trained.items()
    }
    shipped = prune_budget.shipped_arm(arms, budget_ms, limit_ms)
    if shipped == PRUNED:
        return None
    trained[shipped].record["shipped"] = True
    return trained[shipped]


def summary(alternatives: list[Alternative] | None, pruned: str) -> str:
    """The stage line's words on the alternatives and on the pruned student (`pruned`), the one that ships last.

    Where an alternative ships, the pruned student's words are marked as the pruned student's: unmarked, "budget
    0.06731 ms NOT met ... 50.0% of channels removed" read as the stage's result beside a network that met the budget
    and shipped."""
    said = []
    for a in alternatives or ():
        r = a.record
        if not r["trained"]:
            said.append(f"{r['model']} not trained ({r['untrained']['latency_ms']:.4f} ms untrained, over the budget)")
        else:
            ships = ", ships" if r["shipped"] else ""
            achieved_ms, validation = r["achieved"]["latency_ms"], r["validation_accuracy"]
            labels = ""
            if "without_teacher" in r:
                kept = ", kept" if r["kept"] == LABELS_ALONE else ""
                labels = f" ({r['without_teacher']['validation_accuracy']:.4f} on labels alone{kept})"
            said.append(f"{r['model']} whole {achieved_ms:.4f} ms, {validation:.4f} validation{labels}{ships}")
    if not said:
        return pruned
    if any(a.record["shipped"] for a in alternatives):
        return f"the pruned student, not shipped: {pruned}; alternatives: {'; '.join(said)}"
    return f"alternatives: {'; '.join(said)}; {pruned}"
