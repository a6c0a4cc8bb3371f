"""The prune stage's latency-budget decision: measure candidates (a uniform ratio, or channel counts per group),
decide once, keep the decision for a resumed run, and measure what the fine-tune produced.

Under torchrun only the leader measures (ranks timing at once would slow each other) and tells the rest. The
`params` read here are the prune stage's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS
from pipeline.datasets.artifact import Dataset
from pipeline.errors import require
from pipeline.models.cifar import STRIDED_STEM
from pipeline.models.depth import droppable_blocks
from pipeline.models.group_pruning import prune_groups
from pipeline.models.pruning import prune_channels
from pipeline.runtime import targets
from pipeline.runtime.timing import PROVIDER_NAMES, is_provider
from pipeline.search import prune_candidates, prune_confirm, prune_layer_table, prune_plateau
from pipeline.search.prune_layers import LATENCY_MODELS, least_pruned
from pipeline.search.prune_ratio import least_ratio, search_limit
from pipeline.search.prune_sampled import best_scored
from pipeline.search.prune_scores import ValidationScores
from pipeline.training import distributed

log = logging.getLogger(__name__)
# prune.search -> which of several configurations it prefers (of those that met the limit, or were as fast)
PREFERENCES = {"uniform": least_ratio, "per_layer": least_pruned, "sampled": best_scored}
SEARCHES = tuple(PREFERENCES)  # prune.search
SEARCH_SCORES = ("magnitude", "validation")  # prune.search_score
LATENCY_MODEL_NAMES = tuple(LATENCY_MODELS)  # prune.search_latency_model


def has_budget(params: Any) -> bool:
    """Whether the prune stage's channels are set by a latency search: a budget in ms, or as a speed-up over the
    teacher."""
    return params.target_latency_ms is not None or params.target_speedup_vs_teacher is not None


def check_params(params: Any) -> None:
    """The prune stage's budget settings and its search's, each a one-line ConfigError naming the key."""
    require(
        params.target_latency_ms is None or params.target_latency_ms > 0,
        "prune.target_latency_ms",
        params.target_latency_ms,
        "a number of milliseconds > 0, or null to prune by prune.ratio",
    )
    require(
        params.target_speedup_vs_teacher is None or params.target_speedup_vs_teacher > 0,
        "prune.target_speedup_vs_teacher",
        params.target_speedup_vs_teacher,
        "a factor > 0 (the budget is the teacher's fastest timing over it), or null",
    )
    require(
        params.target_latency_ms is None or params.target_speedup_vs_teacher is None,
        "prune.target_speedup_vs_teacher",
        params.target_speedup_vs_teacher,
        f"null while prune.target_latency_ms is set ({params.target_latency_ms}): one budget, in ms or as a speed-up",
    )
    require(params.target_batch >= 1, "prune.target_batch", params.target_batch, "an integer >= 1")
    require(is_provider(params.target_provider), "prune.target_provider", params.target_provider, PROVIDER_NAMES)
    require(
        params.target_threads is None or params.target_threads >= 1,
        "prune.target_threads",
        params.target_threads,
        "null (tuned per candidate) or an integer >= 1",
    )
    targets.check(params.target_device)
    formats = " or ".join(prune_candidates.FORMATS)
    require(params.target_format in prune_candidates.FORMATS, "prune.target_format", params.target_format, formats)
    require(params.search in SEARCHES, "prune.search", params.search, " or ".join(SEARCHES))
    scores = " or ".join(SEARCH_SCORES)
    require(params.search_score in SEARCH_SCORES, "prune.search_score", params.search_score, scores)
    models = " or ".join(LATENCY_MODEL_NAMES)
    require(
        params.search_latency_model in LATENCY_MODEL_NAMES,
        "prune.search_latency_model",
        params.search_latency_model,
        models,
    )
    require(params.search_samples >= 0, "prune.search_samples", params.search_samples, "an integer >= 0")
    require(0 < params.max_ratio < 1, "prune.max_ratio", params.max_ratio, "a fraction of channels in (0, 1)")
    require(0 < params.search_step <= params.max_ratio, "prune.search_step", params.search_step, "in (0, max_ratio]")
    require(params.search_refine >= 0, "prune.search_refine", params.search_refine, "an integer >= 0")
    require(0 <= params.search_margin < 1, "prune.search_margin", params.search_margin, "a fraction in [0, 1)")
    require(params.search_repeats >= 1, "prune.search_repeats", params.search_repeats, "an integer >= 1")
    require(params.search_budget_s > 0, "prune.search_budget_s", params.search_budget_s, "a number of seconds > 0")
    require(params.retime_rounds >= 0, "prune.retime_rounds", params.retime_rounds, "an integer >= 0 (0: none)")
    require(params.retime_gap_s >= 0, "prune.retime_gap_s", params.retime_gap_s, "a number of seconds >= 0")
    require(
        params.thread_probe_s >= 0, "prune.thread_probe_s", params.thread_probe_s, "a number of seconds >= 0 (0: none)"
    )


def pruning(spec, params: Any):
    """`prune(model, setting)`: a copy pruned in place to a ratio (the uniform search) or to counts per group."""

    def prune(model: torch.nn.Module, setting: float | dict[str, int]) -> None:
        if isinstance(setting, dict):
            prune_groups(model, spec.example_input(), spec.num_classes, params, setting)
        else:
            prune_channels(model, spec.example_input(), spec.num_classes, params, setting)

    return prune


def candidates(student: torch.nn.Module, spec, dataset: Dataset, params: Any) -> prune_candidates.Candidates:
    return prune_candidates.Candidates(student, spec, dataset.train_images, dataset.norm, params, pruning(spec, params))


def validation_scores(student: torch.nn.Module, spec, dataset: Dataset, params: Any) -> ValidationScores:
    return ValidationScores(student, dataset, params.seed, pruning(spec, params))


def latency_decision(
    student: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path, name: str = "search.json"
) -> dict:
    """The search's JSON decision, measured once: kept in the work directory (as `name`) so a resumed run re-uses
    it (the fine-tune checkpoint belongs to that architecture). Pure in its inputs, so one rank can decide for all."""
    return kept_json(out_dir / CHECKPOINTS / name, lambda: searched(student, spec, dataset, params, out_dir))


def kept_json(saved: Path, measured: Callable[[], dict]) -> dict:
    """What `measured()` returns, measured once: read back from `saved` (in a work directory's checkpoints) when a
    killed run left it there, else measured and saved for the next one."""
    if saved.is_file():
        return json.loads(saved.read_text())
    result = measured()
    saved.parent.mkdir(parents=True, exist_ok=True)
    temp = saved.with_suffix(".tmp")
    temp.write_text(json.dumps(result))
    os.replace(temp, saved)
    return result


def searched(student: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path) -> dict:
    """The search's decision as measured now (see latency_decision)."""
    measure = candidates(student, spec, dataset, params)
    try:
        if params.search != "uniform":  # per-layer tables are kept beside the stage's entries, across budgets
            tables = out_dir.parent / prune_layer_table.TABLES
            on_validation = params.search == "sampled" or params.search_score == "validation"
            scores = validation_scores(student, spec, dataset, params) if on_validation else None
            decision = prune_layer_table.search(measure, student, spec, params, tables, scores)
        else:
            decision = prune_candidates.search(measure, params)
        if not decision["met"]:
            decision = prune_plateau.settled(decision, measure.retime, PREFERENCES[params.search])
        else:  # a burst may have put a less pruned configuration over the limit: timed again beside the chosen one
            decision = prune_confirm.confirmed(decision, measure.retime, PREFERENCES[params.search])
    finally:
        measure.close()
    return decision


def budget_decision(
    student: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    out_dir: Path,
    arm: str = "",
    hint: bool | None = None,
) -> dict | None:
    """With a latency budget, the search's decision (None without one); `arm` ("uniform" for the baseline, "depth-N"
    for prune.drop_blocks auto's) names its saved decision and its warning; `hint` (default: the unnamed arm's)
    adds what lowers the floor to a missed budget. Under torchrun only the leader measures (ranks timing at once
    would slow each other) and tells the rest."""
    if params.target_latency_ms is None:
        return None
    leader = distributed.is_leader()
    name = f"{arm}-search.json" if arm else "search.json"
    decision = latency_decision(student, spec, dataset, params, out_dir, name) if leader else None
    search = distributed.broadcast_json(decision)
    if "message" in search.get("confirmed", {}):  # a burst had the search prune more than the budget needs
        log.info("prune%s: %s", f" ({arm} arm)" if arm else "", search["confirmed"]["message"])
    if not search["met"]:
        if not search["out_of_time"] and (not arm if hint is None else hint):
            # Every configuration measured and the fastest missed: the floor is the student's. Said once, by the
            # search (the uniform baseline's line, which follows, gives its own numbers).
            lower = f"{lower_floor(spec.name, len(droppable_blocks(student)))}; `edgeforge floor --model NAME` "
            lower += "measures one's floor before training"
            search = {**search, "message": f"{search['message']}; {lower}"}
        log.warning("prune%s: %s", f" ({arm} arm)" if arm else "", search["message"])
    return search


def lower_floor(model: str, droppable: int = 0) -> str:
    """What lowers a floor no pruning reaches: pruning thins channels but keeps the feature maps every layer runs on,
    and at batch 1 each operator's fixed cost; `droppable`: the residual blocks the student still has to drop."""
    strided = (
        f"; {model}_s2 runs every layer after the stem on a quarter of the pixels" if model in STRIDED_STEM else ""
    )
    blocks = f", or remove whole residual blocks (prune.drop_blocks, {droppable} more can go)" if droppable else ""
    return f"for a lower floor distill a smaller student (distill.model, distill.width{strided}){blocks}"


def uniform_baseline_decision(
    student: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path
) -> dict | None:
    """With a per-layer search and prune.uniform_baseline, the uniform search's decision at the same budget (None
    otherwise): the simple path the per-layer search has to beat, measured the same way."""
    if params.search == "uniform" or not params.uniform_baseline:
        return None
    uniform = dataclasses.replace(params, search="uniform")
    return budget_decision(student, spec, dataset, uniform, out_dir, arm="uniform")


def both_unpruned(search: dict, uniform: dict) -> bool:
    """Whether the per-layer search and the uniform one both kept every channel (a budget the student meets as
    it is) and no block was removed before the search (prune.drop_blocks): the same model, which the stage fine-tunes
    once for both."""
    return search["ratio"] == 0 and uniform["ratio"] == 0 and not search.get("dropped_blocks")


def achieved(model: torch.nn.Module, spec, dataset: Dataset, params: Any, limit_ms: float) -> dict[str, Any]:
    """A model that may ship (an arm after its fine-tune, an alternative) measured as its candidate was (weights do
    not change the graph; noise does), taken again while over `limit_ms`, the search's limit (limit_ms(params): what
    every such network is held to first; pipeline/search/retime.py); under torchrun by the leader, for every rank."""
    if not distributed.is_leader():
        return distributed.broadcast_json(None)
    measure = candidates(model, spec, dataset, params)
    try:
        return distributed.broadcast_json(measure.measure(model, limit_ms))
    finally:
        measure.close()


def versus_uniform(search: dict, steps: list[dict], uniform: dict, uniform_steps: list[dict]) -> dict:
    """The per-layer `search` with the uniform baseline beside it (`uniform`: its decision and achieved latency;
    `*steps`: each run's schedule with accuracies), what each model reached after its fine-tune, and which ships."""

    def finetuned(schedule: list[dict]) -> dict:
        return {**schedule[-1]["after_finetune"], "macs": schedule[-1]["macs"], "params": schedule[-1]["params"]}

    mine, theirs = finetuned(steps), finetuned(uniform_steps)
    arms = {
        search["search"]: (search["achieved"]["latency_ms"], mine["validation_accuracy"]),
        "uniform": (uniform["achieved"]["latency_ms"], theirs["validation_accuracy"]),
    }
    baseline = {
        **{key: uniform[key] for key in ("ratio", "met", "predicted_ms", "achieved", "trace", "seconds", "method")},
        "message": uniform.get("message", ""),
        "before_finetune": uniform_steps[0]["before_finetune"],
        "finetuned": theirs,
        # timed again in interleaved rounds: pipeline/search/prune_plateau.py (missed), prune_confirm.py (met)
        **{key: uniform[key] for key in ("plateau", "confirmed") if key in uniform},
    }
    shipped = shipped_arm(arms, search["budget_ms"], search.get("limit_ms"))  # within the limit first
    baseline["same_model"] = both_unpruned(search, uniform)  # one model, fine-tuned once for both arms
    return {**search, "finetuned": mine, "uniform_baseline": baseline, "shipped": shipped}


def limit_ms(params: Any) -> float:
    """The search's limit, the budget less prune.search_margin: what the searches' candidates meet, and what every
    network that may ship (the arms, the alternatives) is held to first (shipped_arm)."""
    return search_limit(params.target_latency_ms, params.search_margin)


def shipped_arm(arms: dict[str, tuple[float, float]], budget_ms: float, limit_ms: float | None = None) -> str:
    """Of {name: (achieved p50 ms, validation accuracy)}, the one that ships: the most accurate on validation among
    those that measured within the budget after their fine-tune (a tie goes to the first named), else the fastest.
    With `limit_ms` (the budget less prune.search_margin), those within it come first: headroom for the bench, whose
    bound gate reads an edge model's slowest round where this stage kept its fastest."""
    for threshold in [limit_ms, budget_ms] if limit_ms is not None else [budget_ms]:
        within = [name for name, (latency_ms, _) in arms.items() if latency_ms <= threshold]
        if within:
            return max(within, key=lambda name: arms[name][1])
    return min(arms, key=lambda name: arms[name][0])


def shipped_search(search: dict) -> dict:
    """The search (with its achieved latency) whose model ships: the uniform baseline's, or the search's own."""
    return search["uniform_baseline"] if search.get("shipped") == "uniform" else search


def shipped_latency_ms(search: dict) -> float:
    """The achieved p50 (ms) of the model the searches' arms ship."""
    return shipped_search(search)["achieved"]["latency_ms"]


def search_summary(search: dict | None) -> str:
    if search is None:
        return ""
    shipped = shipped_search(search)
    achieved_ms = shipped["achieved"]["latency_ms"]
    verdict = "NOT met"
    if achieved_ms <= search["budget_ms"]:
        # The search's limit is the budget less prune.search_margin; a model may miss it and still measure within.
        verdict = "met" if shipped["met"] else "met after the fine-tune (the search's limit, under the margin, was not)"
    versus = ""
    if "uniform_baseline" in search:
        other = "uniform" if search["shipped"] != "uniform" else search["search"]
        versus = (
            ", the uniform search kept every channel too: one model"
            if search["uniform_baseline"].get("same_model")
            else f", the {search['shipped']} search's model shipped over the {other} one's"
        )
    return (
        f"budget {search['budget_ms']:g} ms {verdict} (predicted {shipped['predicted_ms']:.4g}, achieved "
        f"{achieved_ms:.4g} ms {shipped['achieved']['format']}, {len(shipped['trace'])} candidates{versus}); "
    )
