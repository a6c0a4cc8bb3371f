"""teacher: train the large model whose softened logits the student learns from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.errors import require
from pipeline.models import (
    ModelSpec,
    build_model,
    check_model_name,
    count_macs_and_params,
    model_source_sha256,
    save_model,
)
from pipeline.train import Recipe, accuracy, fit
from stages import data

NAME = "teacher"
SECTION = "teacher"
VERSION = 1
INPUTS = ("data",)
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")


@dataclasses.dataclass(frozen=True)
class Params:
    model: str = "cnn"  # cnn, mlp, resnet8..resnet110, mobilenetv2, or package.module:function
    width: int = 32  # cnn: first block channels; mlp: hidden units; resnet*/mobilenetv2: stem channels
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1  # peak of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1  # random translation in pixels
    flip: bool = False  # random horizontal flips
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda

    def __post_init__(self):
        check_model_name("teacher.model", self.model)
        check_training_params("teacher", self)


def check_training_params(section: str, params: Any) -> None:
    """Range checks of the stages that train a model from scratch."""
    require(params.width >= 1, f"{section}.width", params.width, "an integer >= 1")
    require(params.epochs >= 1, f"{section}.epochs", params.epochs, "an integer >= 1")
    check_recipe_params(section, params)


def check_recipe_params(section: str, params: Any) -> None:
    """Range checks shared by every stage that trains (teacher, distill, prune's fine-tune)."""
    require(params.batch_size >= 1, f"{section}.batch_size", params.batch_size, "an integer >= 1")
    require(params.lr > 0, f"{section}.lr", params.lr, "a number > 0")
    require(params.weight_decay >= 0, f"{section}.weight_decay", params.weight_decay, "a number >= 0")
    require(0 <= params.label_smoothing < 1, f"{section}.label_smoothing", params.label_smoothing, "a number in [0, 1)")
    require(params.shift >= 0, f"{section}.shift", params.shift, "an integer >= 0")
    require(params.schedule in ("onecycle", "cosine"), f"{section}.schedule", params.schedule, "onecycle or cosine")
    require(params.device in ("auto", "cpu", "cuda"), f"{section}.device", params.device, "auto, cpu or cuda")


def spec_for(dataset: data.Dataset, model: str, width: int) -> ModelSpec:
    _, channels, height, width_px = dataset.train_images.shape
    return ModelSpec(model, width, channels, len(dataset.class_names), (height, width_px))


def recipe_for(params: Any, epochs: int, temperature: float = 1.0, alpha: float = 0.0) -> Recipe:
    return Recipe(
        epochs=epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        weight_decay=params.weight_decay,
        label_smoothing=params.label_smoothing,
        seed=params.seed,
        shift=params.shift,
        flip=params.flip,
        temperature=temperature,
        alpha=alpha,
        schedule=params.schedule,
        device=params.device,
    )


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source file is an input: editing it must re-run this stage."""
    source = model_source_sha256(params.model)
    return {"model_source_sha256": source} if source else {}


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = data.load(inputs["data"])
    spec = spec_for(dataset, params.model, params.width)
    torch.manual_seed(params.seed)
    model = build_model(spec)
    history = fit(
        model,
        torch.from_numpy(dataset.train_images),
        torch.from_numpy(dataset.train_labels),
        dataset.norm,
        recipe_for(params, params.epochs),
        stage=NAME,
        checkpoint=out_dir / CHECKPOINTS / "teacher.pt",
    )
    test_accuracy = accuracy(
        model, torch.from_numpy(dataset.test_images), torch.from_numpy(dataset.test_labels), dataset.norm
    )
    save_model(model, spec, out_dir)
    macs, n_params = count_macs_and_params(model, spec)
    return {
        "test_accuracy": test_accuracy,
        "params": n_params,
        "macs": macs,
        "history": history,
        "summary": f"{params.model} x{params.width}, {n_params:,} params, test accuracy {test_accuracy:.4f}",
    }
