"""distill: train the small student on hard labels plus the teacher's temperature-softened logits.

Also trains the same student, same seed and budget, on labels alone (alpha = 0), so the report can
show what distillation bought. Set `distill.baseline: false` to skip that second run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import require
from pipeline.models.factory import build_model, check_model_name, count_macs_and_params, model_source_sha256
from pipeline.models.storage import load_model, save_model
from pipeline.training.loop import accuracy, fit
from pipeline.training.recipes import check_training_params, model_label, recipe_for, resolve_width, spec_for

NAME = "distill"
SECTION = "distill"
VERSION = 1
INPUTS = ("data", "teacher")
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")


@dataclasses.dataclass(frozen=True)
class Params:
    model: str = "cnn"  # student architecture: see teacher.model
    width: int | None = dataclasses.field(default=8, metadata={"follows": "model"})  # see teacher.width
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1
    flip: bool = False
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    temperature: float = 4.0  # T: softens both distributions; the KD term is scaled by T^2
    alpha: float = 0.9  # weight of the KD term; 0 trains on labels only
    baseline: bool = True  # also train the student without the teacher, for the report

    def __post_init__(self):
        check_model_name("distill.model", self.model)
        check_training_params("distill", self)
        resolve_width(self)
        require(self.temperature > 0, "distill.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "distill.alpha", self.alpha, "a number in [0, 1]")


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source file is an input: editing it must re-run this stage."""
    source = model_source_sha256(params.model)
    return {"model_source_sha256": source} if source else {}


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    teacher, _ = load_model(inputs["teacher"].path)
    spec = spec_for(dataset, params.model, params.width)
    images, labels = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels)
    test = torch.from_numpy(dataset.test_images), torch.from_numpy(dataset.test_labels)

    torch.manual_seed(params.seed)
    student = build_model(spec)
    recipe = recipe_for(params, params.epochs, params.temperature, params.alpha)
    checkpoints = out_dir / CHECKPOINTS
    history = fit(student, images, labels, dataset.norm, recipe, teacher, NAME, checkpoints / "student.pt")
    test_accuracy = accuracy(student, *test, dataset.norm)
    save_model(student, spec, out_dir)

    baseline_accuracy = test_accuracy if params.alpha == 0 else None
    baseline_history = None
    if params.baseline and params.alpha > 0:
        torch.manual_seed(params.seed)
        baseline = build_model(spec)
        baseline_recipe = recipe_for(params, params.epochs, params.temperature, alpha=0.0)
        baseline_history = fit(
            baseline,
            images,
            labels,
            dataset.norm,
            baseline_recipe,
            None,
            f"{NAME} baseline",
            checkpoints / "baseline.pt",
        )
        baseline_accuracy = accuracy(baseline, *test, dataset.norm)

    macs, n_params = count_macs_and_params(student, spec)
    gain = "" if baseline_accuracy is None else f" (without teacher {baseline_accuracy:.4f})"
    return {
        "test_accuracy": test_accuracy,
        "baseline_test_accuracy": baseline_accuracy,
        "params": n_params,
        "macs": macs,
        "history": history,
        "baseline_history": baseline_history,
        "summary": f"{model_label(params.model, params.width)}, {n_params:,} params, "
        f"test accuracy {test_accuracy:.4f}{gain}",
    }
