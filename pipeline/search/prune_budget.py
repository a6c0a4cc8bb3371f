"""The prune stage's latency-budget decision: measure candidates (a uniform ratio, or channel counts per group),
decide once, keep the decision for a resumed run, and measure what the fine-tune produced.

Under torchrun only the leader measures (ranks timing at once would slow each other) and tells the rest. The
`params` read here are the prune stage's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS
from pipeline.datasets.artifact import Dataset
from pipeline.models.group_pruning import prune_groups
from pipeline.models.pruning import prune_channels
from pipeline.search import prune_candidates, prune_layer_table
from pipeline.search.prune_scores import ValidationScores
from pipeline.training import distributed

log = logging.getLogger(__name__)


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


def latency_decision(student: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path) -> dict:
    """The search's JSON decision, measured once: kept in the work directory so a resumed run re-uses it (the
    fine-tune checkpoint belongs to that architecture). Pure in its inputs, so one rank can decide for all."""
    saved = out_dir / CHECKPOINTS / "search.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    measure = candidates(student, spec, dataset, params)
    try:
        if params.search != "uniform":  # per-layer tables are kept beside the stage's entries, across budgets
            tables = out_dir.parent / prune_layer_table.TABLES
            on_validation = params.search == "sampled" or params.search_score == "validation"
            scores = validation_scores(student, spec, dataset, params) if on_validation else None
            decision = prune_layer_table.search(measure, student, spec, params, tables, scores)
        else:
            decision = prune_candidates.search(measure, params)
    finally:
        measure.close()
    saved.parent.mkdir(parents=True, exist_ok=True)
    temp = saved.with_suffix(".tmp")
    temp.write_text(json.dumps(decision))
    os.replace(temp, saved)
    return decision


def budget_decision(student: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path) -> dict | None:
    """With a latency budget, the search's decision (None without one). Under torchrun only the leader measures
    (ranks timing at once would slow each other) and tells the rest."""
    if params.target_latency_ms is None:
        return None
    leader = distributed.is_leader()
    search = distributed.broadcast_json(latency_decision(student, spec, dataset, params, out_dir) if leader else None)
    if not search["met"]:
        log.warning("prune: %s", search["message"])
    return search


def achieved_latency(model: torch.nn.Module, spec, dataset: Dataset, params: Any) -> dict[str, Any]:
    """The fine-tuned model measured as its candidate was (weights do not change the graph; noise does)."""
    measure = candidates(model, spec, dataset, params)
    try:
        return measure.measure(model)
    finally:
        measure.close()


def search_summary(search: dict | None) -> str:
    if search is None:
        return ""
    achieved = search["achieved"]["latency_ms"]
    verdict = "met" if search["met"] and achieved <= search["budget_ms"] else "NOT met"
    return (
        f"budget {search['budget_ms']:g} ms {verdict} (predicted {search['predicted_ms']:.4g}, achieved "
        f"{achieved:.4g} ms {search['achieved']['format']}, {len(search['trace'])} candidates); "
    )
