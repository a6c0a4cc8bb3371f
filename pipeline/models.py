"""Model builders behind one factory, and loading/saving models without pickled code.

A saved model is `model.pt` (a state_dict, loaded with weights_only=True) plus `model.json`
(the builder name and arguments, and torch-pruning's history for pruned models). Loading builds
a fresh model, replays the pruning history on it, then loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture."""

    name: str  # a key of MODELS
    width: int  # cnn: channels of the first block; mlp: hidden units
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]  # (height, width)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, *self.image_size)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def cnn(spec: ModelSpec) -> nn.Module:
    """Three 3x3 conv blocks (width, 2x, 4x channels), one 2x2 max-pool, global average pool, linear head."""
    w = spec.width
    return nn.Sequential(
        conv_block(spec.in_channels, w),
        conv_block(w, 2 * w),
        nn.MaxPool2d(2),
        conv_block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, spec.num_classes),
    )


def mlp(spec: ModelSpec) -> nn.Module:
    """Two hidden layers of `width` units (Hinton et al. 2015 used 2x1200 and 2x800 on MNIST)."""
    inputs = spec.in_channels * spec.image_size[0] * spec.image_size[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, spec.width),
        nn.ReLU(inplace=True),
        nn.Linear(spec.width, spec.width),
        nn.ReLU(inplace=True),
        nn.Linear(spec.width, spec.num_classes),
    )


MODELS = {"cnn": cnn, "mlp": mlp}


def check_model_name(key: str, name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"{key}={name!r} is not a known model; available: {', '.join(sorted(MODELS))}")


def build_model(spec: ModelSpec) -> nn.Module:
    check_model_name("model", spec.name)
    return MODELS[spec.name](spec)


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The final linear layer: its outputs are the classes and must never be pruned."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError("model has no nn.Linear producing the class logits")
    return heads[-1]


def count_macs_and_params(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    """Multiply-accumulates for one image, and parameter count."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, spec.example_input())
    model.train(was_training)
    return int(macs), int(params)


def save_model(model: nn.Module, spec: ModelSpec, out_dir: Path, pruning_history: list | None = None) -> None:
    torch.save(model.state_dict(), out_dir / "model.pt")
    description = {"spec": dataclasses.asdict(spec), "pruning_history": pruning_history or []}
    (out_dir / "model.json").write_text(json.dumps(description, indent=2) + "\n")


def load_model(model_dir: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a saved model in eval mode. Call only on a verified artifact directory."""
    description = json.loads((model_dir / "model.json").read_text())
    fields = description["spec"]
    spec = ModelSpec(**{**fields, "image_size": tuple(fields["image_size"])})
    model = build_model(spec).eval()
    if description["pruning_history"]:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=spec.example_input())
        graph.load_pruning_history(description["pruning_history"])
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True, map_location="cpu"))
    return model, spec
