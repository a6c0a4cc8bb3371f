"""The prune stage's pruning and fine-tune: channels removed (to one ratio, or to a count per group) in
`prune.steps` steps, each followed by its share of the distillation fine-tune. The stage runs it once for the model
it ships and, with a per-layer search and `prune.uniform_baseline`, once more for the uniform search's ratio at the
same budget (the same schedule, under other checkpoint names). With `prune.scratch_baseline`, the pruned
architecture also trained from fresh weights, and the more accurate on validation ships (versus_scratch)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS
from pipeline.datasets.artifact import Dataset
from pipeline.errors import StageError
from pipeline.models.depth import drop_blocks
from pipeline.models.factory import build_model, count_macs_and_params
from pipeline.models.group_pruning import GroupPruner
from pipeline.models.pruning import make_pruner, schedule
from pipeline.models.storage import architecture, replay_pruning
from pipeline.search import prune_layers
from pipeline.training import features
from pipeline.training.loop import fit
from pipeline.training.recipes import recipe_for, scored


def prune_and_finetune(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    ratio: float,
    out_dir: Path,
    channels: dict[str, int] | None = None,
    arm: str = "",
) -> tuple[list, list[dict[str, Any]], list]:
    """Prune `student` in place to `ratio` (or to `channels` per group, the per-layer search's) in `params.steps`
    steps, each followed by its share of the distillation fine-tune. Returns torch-pruning's history, the schedule
    with each step's size and accuracies (before and after its fine-tune), and the fine-tune's per-epoch history.
    `arm` ("uniform" for the baseline) names its log lines and prefixes its checkpoints, so a resumed run finds each
    run's own."""
    plan = schedule(ratio, params.steps if ratio > 0 else 1, params.finetune_epochs, params.step_epochs)
    example, classes = spec.example_input(), spec.num_classes
    if channels is not None:
        pruner = GroupPruner(student, example, classes, params, channels, len(plan))
    else:
        pruner = make_pruner(student, example, classes, params, ratio, len(plan)) if ratio else None
    name, prefix = ("prune", "") if not arm else (f"prune {arm}", f"{arm}-")
    training: list = []
    for step in plan:
        if pruner is not None:
            pruner.step()
        if channels is not None:  # per group: what rounding up to round_to left of the nominal share
            step["ratio"] = prune_layers.share_removed(pruner.full, pruner.counts())
        macs, n_params = count_macs_and_params(student, spec)
        before = scored(student, dataset)
        checkpoint = "finetune.pt" if len(plan) == 1 else f"finetune-{step['step']}.pt"
        checkpoint_path = out_dir / CHECKPOINTS / (prefix + checkpoint)
        training += finetune(student, teacher, spec, dataset, params, step["epochs"], checkpoint_path, name)
        step.update(macs=macs, params=n_params, before_finetune=before, after_finetune=scored(student, dataset))
    return (pruner.pruning_history() if pruner is not None else []), plan, training


def finetune(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    epochs: int,
    checkpoint: Path,
    name: str = "prune",
) -> list:
    """`epochs` of distillation fine-tune of the pruned student (in place), with prune.feature_loss (resolved: the
    stage replaced "distill" by the distill stage's kind); its per-epoch history."""
    if epochs == 0:
        return []
    recipe = recipe_for(params, epochs, params.temperature, params.alpha)
    images, labels = dataset.train_images, dataset.train_labels
    validation = dataset.val_images, dataset.val_labels
    # Built against the model as pruned now: the layer pairs are found again after blocks or channels went.
    matching = features.build_for(params, teacher, student, spec.example_input())
    return fit(student, images, labels, dataset.norm, recipe, teacher, name, checkpoint, matching, validation)


def versus_scratch(
    pruned: torch.nn.Module,
    scores: dict[str, float],
    spec,
    dropped_blocks: list[str],
    pruning_history: list,
    teacher: torch.nn.Module,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
) -> tuple[torch.nn.Module, dict[str, float], dict[str, Any] | None, bool]:
    """With prune.scratch_baseline, the pruned architecture also built with fresh weights and trained with
    distillation by the distill stage's recipe (train_from_scratch): what pruning bought. The same architecture has
    the same latency, so the more accurate on validation ships; a tie: the fine-tune, `pruned` with its `scores`.
    (The model that ships, its validation and test accuracy, the scratch record or None without the baseline,
    whether the scratch model ships.)"""
    if not params.scratch_baseline:
        return pruned, scores, None, False
    torch.manual_seed(distill_params["seed"])
    model = build_model(spec)
    drop_blocks(model, dropped_blocks)
    replay_pruning(model, spec, pruning_history)
    if architecture(model) != architecture(pruned):
        raise StageError("prune: the from-scratch baseline does not have the pruned architecture (replay failed)")
    trained = train_from_scratch(model, spec, teacher, dataset, params, distill_params, out_dir, "scratch")
    scratch = {**trained, "architecture": architecture(model)}
    if scratch["validation_accuracy"] <= scores["validation_accuracy"]:
        return pruned, scores, scratch, False
    return model, {key: scratch[key] for key in ("validation_accuracy", "test_accuracy")}, scratch, True


def train_from_scratch(
    model: torch.nn.Module,
    spec,
    teacher: torch.nn.Module | None,
    dataset: Dataset,
    params: Any,
    distill_params: dict[str, Any],
    out_dir: Path,
    name: str,
) -> dict[str, Any]:
    """Train `model` (fresh weights) in place by the distill stage's recipe, its feature loss too, for distill.epochs
    + prune.finetune_epochs (or prune.scratch_epochs): as long as the student trained in distill and the fine-tune
    (teacher None, with alpha 0 and no feature loss: on labels alone). `name` names its log lines and its
    checkpoint, so a resumed run finds its own. {epochs, accuracies, history}."""
    epochs = params.scratch_epochs or distill_params["epochs"] + params.finetune_epochs
    teaching = SimpleNamespace(**distill_params)
    recipe = recipe_for(teaching, epochs, teaching.temperature, teaching.alpha)
    matching = features.build_for(teaching, teacher, model, spec.example_input())
    images, labels = dataset.train_images, dataset.train_labels
    validation = dataset.val_images, dataset.val_labels
    checkpoint = out_dir / CHECKPOINTS / f"{name}.pt"
    history = fit(
        model, images, labels, dataset.norm, recipe, teacher, f"prune {name}", checkpoint, matching, validation
    )
    return {"epochs": epochs, **scored(model, dataset), "history": history}
