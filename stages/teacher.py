"""teacher: train the large model whose softened logits the student learns from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.models.factory import build_model, check_model_name, count_macs_and_params, model_source_sha256
from pipeline.models.storage import save_model
from pipeline.training.loop import fit
from pipeline.training.recipes import check_training_params, model_label, recipe_for, resolve_width, scored, spec_for

NAME = "teacher"
SECTION = "teacher"
VERSION = 2
INPUTS = ("data",)
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")


@dataclasses.dataclass(frozen=True)
class Params:
    model: str = "cnn"  # cnn, mlp, resnet8..resnet110, mobilenetv2, or package.module:function
    # cnn: first block channels; mlp: hidden units; resnet*/mobilenetv2: stem channels. Choosing a model without a
    # width (or width null) gives that architecture's published width: resnets 16, mobilenetv2 32, cnn 32, mlp 1200.
    width: int | None = dataclasses.field(default=32, metadata={"follows": "model"})
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1  # peak of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1  # random translation in pixels
    flip: bool = False  # random horizontal flips
    augment: str = "shift"  # shift (small images) or resized_crop (RandomResizedCrop, for full-size images)
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda

    def __post_init__(self):
        check_model_name("teacher.model", self.model)
        check_training_params("teacher", self)
        resolve_width(self)


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source file is an input: editing it must re-run this stage."""
    source = model_source_sha256(params.model)
    return {"model_source_sha256": source} if source else {}


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    spec = spec_for(dataset, params.model, params.width)
    validation = dataset.val_images, dataset.val_labels
    torch.manual_seed(params.seed)
    model = build_model(spec)
    history = fit(
        model,
        dataset.train_images,
        dataset.train_labels,
        dataset.norm,
        recipe_for(params, params.epochs),
        stage=NAME,
        checkpoint=out_dir / CHECKPOINTS / "teacher.pt",
        validation=validation,
    )
    scores = scored(model, dataset)
    save_model(model, spec, out_dir)
    macs, n_params = count_macs_and_params(model, spec)
    return {
        **scores,
        "params": n_params,
        "macs": macs,
        "history": history,
        "summary": f"{model_label(params.model, params.width)}, {n_params:,} params, "
        f"validation accuracy {scores['validation_accuracy']:.4f}",
    }
