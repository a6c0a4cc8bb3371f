"""teacher: train the large model whose softened logits the student learns from.

It can start from weights the user brings (`teacher.weights`, a .safetensors or state_dict .pt file) or a library's
pretrained weights (`teacher.pretrained`), and then be fine-tuned, or, with `teacher.epochs: 0`, used as it is:
evaluated and saved, never trained.
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
from pipeline.training.loop import fit
from pipeline.training.recipes import (
    check_training_params,
    model_inputs,
    model_label,
    recipe_for,
    resolve_width,
    scored,
    spec_for,
    start_from,
)

NAME = "teacher"
SECTION = "teacher"
VERSION = 2
INPUTS = ("data",)
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")


@dataclasses.dataclass(frozen=True)
class Params:
    # cnn, mlp, resnet8..resnet110, mobilenetv2, torchvision:NAME, timm:NAME, or package.module:function
    model: str = "cnn"
    # cnn: first block channels; mlp: hidden units; resnet*/mobilenetv2: stem channels. Choosing a model without a
    # width (or width null) gives that architecture's published width: resnets 16, mobilenetv2 32, cnn 32, mlp 1200.
    # Library and user models come in their own widths.
    width: int | None = dataclasses.field(default=32, metadata={"follows": "model"})
    epochs: int = 30  # 0: use the weights as they are (needs weights or pretrained)
    # Start from these weights: a .safetensors file or a state_dict .pt (read with weights_only=True)
    weights: str | None = dataclasses.field(default=None, metadata={"path": True})
    pretrained: bool = False  # start from the library's own pretrained weights (torchvision: or timm: models)
    reinit_head: bool = False  # weights whose classifier has another class count: train a new classifier
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
        check_training_params("teacher", self, min_epochs=0)
        check_model_name("teacher.model", self.model)
        require(
            self.epochs >= 1 or self.weights is not None or self.pretrained,
            "teacher.epochs",
            self.epochs,
            "an integer >= 1, or 0 with teacher.weights or teacher.pretrained (a teacher used as it is)",
        )
        resolve_width(self)


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source, the model library's version and the weights file are inputs: a change re-runs it."""
    return model_inputs(SECTION, params)


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    spec = spec_for(dataset, params.model, params.width)
    validation = dataset.val_images, dataset.val_labels
    torch.manual_seed(params.seed)
    model = build_model(spec)
    start = start_from(model, spec, SECTION, params)
    history = []
    if params.epochs > 0:
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
    trained = "trained" if start == "fresh weights" else "fine-tuned"
    save_model(model, spec, out_dir)
    macs, n_params = count_macs_and_params(model, spec)
    return {
        **scores,
        "params": n_params,
        "macs": macs,
        "history": history,
        "start": start,
        "summary": f"{model_label(params.model, params.width)} {start}"
        + (", used as it is" if params.epochs == 0 else f", {trained} {params.epochs} epoch(s)")
        + f", {n_params:,} params, validation accuracy {scores['validation_accuracy']:.4f}",
    }
