"""prune: structured channel pruning with torch-pruning, then a short distillation fine-tune.

torch-pruning's dependency graph removes whole channels (and the matching inputs of the layers
that consume them), so the pruned model is physically smaller and its MACs really drop. The result
is stored as state_dict plus pruning history: loading replays the history on a freshly built model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.errors import require
from pipeline.models import classifier_head, count_macs_and_params, load_model, save_model
from pipeline.train import accuracy, fit
from stages import data
from stages.teacher import check_recipe_params, recipe_for

NAME = "prune"
SECTION = "prune"
VERSION = 1
INPUTS = ("data", "teacher", "distill")
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")
IMPORTANCES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class Params:
    ratio: float = 0.5  # fraction of channels removed from every prunable layer (0 keeps the student as is)
    importance: str = "l2"  # channel ranking: l1 or l2 norm of each channel group's weights
    global_pruning: bool = False  # rank channels across layers instead of the same ratio in each layer
    # Keep a multiple of this many channels per layer (0: any count). CPU kernels are vectorized over 8 or 16
    # channels: on this machine resnet8 at 12/24/48 channels ran slower than unpruned at 16/32/64 (BENCHMARKS.md).
    round_to: int = 0
    finetune_epochs: int = 15  # distillation fine-tune after pruning (0: none)
    batch_size: int = 64
    lr: float = 0.05  # lower than training: the pruned weights are a good start
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1
    flip: bool = False
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self):
        require(0 <= self.ratio < 1, "prune.ratio", self.ratio, "a fraction of channels in [0, 1)")
        require(self.importance in IMPORTANCES, "prune.importance", self.importance, " or ".join(IMPORTANCES))
        require(self.finetune_epochs >= 0, "prune.finetune_epochs", self.finetune_epochs, "an integer >= 0")
        require(self.round_to >= 0, "prune.round_to", self.round_to, "an integer >= 0 (0: no rounding)")
        check_recipe_params("prune", self)
        require(self.temperature > 0, "prune.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "prune.alpha", self.alpha, "a number in [0, 1]")


def prune_channels(model: torch.nn.Module, example: torch.Tensor, num_classes: int, params: Params) -> list:
    """Remove `params.ratio` of the channels in place; return torch-pruning's history for replay."""
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1 if params.importance == "l1" else 2),
        pruning_ratio=params.ratio,
        global_pruning=params.global_pruning,
        round_to=params.round_to or None,
        ignored_layers=[classifier_head(model, num_classes)],  # its outputs are the classes
    )
    pruner.step()
    return pruner.pruning_history()


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = data.load(inputs["data"])
    teacher, _ = load_model(inputs["teacher"].path)
    student, spec = load_model(inputs["distill"].path)
    test = torch.from_numpy(dataset.test_images), torch.from_numpy(dataset.test_labels)
    macs_before, params_before = count_macs_and_params(student, spec)

    history: list = []
    if params.ratio > 0:
        history = prune_channels(student, spec.example_input(), spec.num_classes, params)
    macs_after, params_after = count_macs_and_params(student, spec)
    accuracy_before_finetune = accuracy(student, *test, dataset.norm)

    recipe = recipe_for(params, params.finetune_epochs, params.temperature, params.alpha)
    training = []
    if params.finetune_epochs > 0:
        images, labels = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels)
        checkpoint = out_dir / CHECKPOINTS / "finetune.pt"
        training = fit(
            student, images, labels, dataset.norm, recipe, teacher=teacher, stage=NAME, checkpoint=checkpoint
        )
    test_accuracy = accuracy(student, *test, dataset.norm)
    save_model(student, spec, out_dir, pruning_history=history)
    return {
        "test_accuracy": test_accuracy,
        "test_accuracy_before_finetune": accuracy_before_finetune,
        "params_before": params_before,
        "params": params_after,
        "macs_before": macs_before,
        "macs": macs_after,
        "history": training,
        "summary": (
            f"{params.ratio:.0%} of channels removed: MACs {macs_before:,} -> {macs_after:,}, "
            f"params {params_before:,} -> {params_after:,}, test accuracy {accuracy_before_finetune:.4f} -> "
            f"{test_accuracy:.4f} after fine-tune"
        ),
    }
