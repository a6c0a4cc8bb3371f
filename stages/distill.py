"""distill: train the small student on hard labels plus the teacher's temperature-softened logits.

With `distill.feature_loss` (hint or attention, pipeline/training/features.py) the student's intermediate feature
maps also learn from the teacher's. Also trains the same student, same seed and budget, on labels alone (alpha =
0, no feature loss), so the report can show what distillation bought; the prune stage does the same for each network
of prune.alternatives it trains. The two runs are the same network, so the more accurate on validation is the
student the later stages start from, the distilled on a tie ("kept"): a teacher little better than the student can
hold it back (on CIFAR-10 with an 8-epoch teacher, resnet8 reached 0.8232 validation on labels alone in 25 epochs,
0.8090 distilled: BENCHMARKS.md). Set `distill.baseline: false` to skip those runs. Accuracies are measured on the
validation split (what choices read) and the test split (reported); the record's are the distilled run's, the
baseline_* ones the labels-alone run's. The student can start from weights
(`distill.weights`, or a library's with `distill.pretrained`); so does its baseline, so the two differ only in what
they learn from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import require
from pipeline.models.factory import build_model, check_model_name, count_macs_and_params
from pipeline.models.storage import save_model
from pipeline.training import features
from pipeline.training.loop import fit
from pipeline.training.onnx_teacher import load_teacher
from pipeline.training.recipes import (
    DISTILLED,
    LABELS_ALONE,
    check_training_params,
    kept_run_name,
    model_inputs,
    model_label,
    recipe_for,
    resolve_width,
    scored,
    spec_for,
    start_from,
)

NAME = "distill"
SECTION = "distill"
# 3: with distill.baseline, the labels-alone run is the student saved when it is more accurate on validation ("kept")
VERSION = 3
INPUTS = ("data", "teacher")
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")


@dataclasses.dataclass(frozen=True)
class Params:
    model: str = "cnn"  # student architecture: see teacher.model
    width: int | None = dataclasses.field(default=8, metadata={"follows": "model"})  # see teacher.width
    epochs: int = 30
    weights: str | None = dataclasses.field(default=None, metadata={"path": True})  # start from: see teacher.weights
    pretrained: bool = False  # start from the library's pretrained weights: see teacher.pretrained
    reinit_head: bool = False  # see teacher.reinit_head
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1
    flip: bool = False
    augment: str = "shift"  # shift (small images) or resized_crop (RandomResizedCrop, for full-size images)
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    temperature: float = 4.0  # T: softens both distributions; the KD term is scaled by T^2
    alpha: float = 0.9  # weight of the KD term; 0 trains on labels only
    # Also train the student without the teacher, and each network prune.alternatives trains: of each network's two
    # runs the more accurate on validation is kept (pipeline/training/prune_alternatives.py for the alternatives).
    baseline: bool = True
    feature_loss: str = "none"  # none; hint (FitNets: 1x1 adapter + MSE) or attention (attention transfer)
    feature_weight: float | None = None  # weight of the feature loss; null: 1 for either
    # Layer pairs "TEACHER_LAYER:STUDENT_LAYER" (model.named_modules() names); null: both networks' stage boundaries
    feature_layers: tuple[str, ...] | None = None

    def __post_init__(self):
        check_training_params("distill", self)
        check_model_name("distill.model", self.model)
        resolve_width(self)
        require(self.temperature > 0, "distill.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "distill.alpha", self.alpha, "a number in [0, 1]")
        require(
            self.feature_loss in features.KINDS, "distill.feature_loss", self.feature_loss, ", ".join(features.KINDS)
        )
        require(
            self.feature_weight is None or self.feature_weight > 0,
            "distill.feature_weight",
            self.feature_weight,
            "a number > 0, or null for the method's default",
        )


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source, the model library's version and the weights file are inputs: a change re-runs it."""
    return model_inputs(SECTION, params)


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    teacher = load_teacher(inputs["teacher"].path)
    spec = spec_for(dataset, params.model, params.width)
    images, labels = dataset.train_images, dataset.train_labels
    validation = dataset.val_images, dataset.val_labels
    torch.manual_seed(params.seed)
    student = build_model(spec)
    start = start_from(student, spec, SECTION, params)
    example = spec.example_input()
    matching = features.build_for(params, teacher, student, example)
    recipe = recipe_for(params, params.epochs, params.temperature, params.alpha)
    checkpoint = out_dir / CHECKPOINTS / "student.pt"
    history = fit(student, images, labels, dataset.norm, recipe, teacher, NAME, checkpoint, matching, validation)
    scores = scored(student, dataset)
    kept, baseline, baseline_history = DISTILLED, None, None
    if params.alpha == 0 and matching is None:  # it learned from labels alone
        baseline = scores
    elif params.baseline:
        labels_model, baseline, baseline_history = train_baseline(params, spec, dataset, out_dir)
        kept = kept_run_name(scores["validation_accuracy"], baseline["validation_accuracy"])
        student = labels_model if kept == LABELS_ALONE else student
    save_model(student, spec, out_dir)
    macs, n_params = count_macs_and_params(student, spec)
    gain = ""
    if baseline is not None:
        gain = f" (without teacher {baseline['validation_accuracy']:.4f}{', kept' if kept == LABELS_ALONE else ''})"
    return {
        **scores,
        "kept": kept,  # the run saved as model.pt: DISTILLED, or LABELS_ALONE when more accurate on validation
        "baseline_validation_accuracy": None if baseline is None else baseline["validation_accuracy"],
        "baseline_test_accuracy": None if baseline is None else baseline["test_accuracy"],
        "feature_distillation": None
        if matching is None
        else {"kind": matching.kind, "weight": matching.weight, "layer_pairs": [list(pair) for pair in matching.pairs]},
        "params": n_params,
        "macs": macs,
        "history": history,
        "baseline_history": baseline_history,
        "start": start,
        "summary": f"{model_label(params.model, params.width)} {start}, {n_params:,} params, "
        f"validation accuracy {scores['validation_accuracy']:.4f}{gain}",
    }


def train_baseline(
    params: Params, spec, dataset, out_dir: Path
) -> tuple[torch.nn.Module, dict[str, float], list[dict]]:
    """The same student, seed and budget, on labels alone (no teacher, no feature loss): the model, its scores and
    history."""
    torch.manual_seed(params.seed)
    model = build_model(spec)
    start_from(model, spec, SECTION, params)
    recipe = recipe_for(params, params.epochs, params.temperature, alpha=0.0)
    images, labels = dataset.train_images, dataset.train_labels
    validation = dataset.val_images, dataset.val_labels
    checkpoint = out_dir / CHECKPOINTS / "baseline.pt"
    history = fit(model, images, labels, dataset.norm, recipe, None, f"{NAME} baseline", checkpoint, None, validation)
    return model, scored(model, dataset), history
