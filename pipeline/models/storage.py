"""Saving and loading models without pickled code.

A saved model is `model.pt` (a state_dict, loaded with weights_only=True) plus `model.json` (the builder name and
arguments, the residual blocks removed and torch-pruning's history for pruned models). Loading builds a fresh model,
removes the same blocks, replays the pruning history on it (recorded on the model without those blocks), then loads
the weights. A model.json without "dropped_blocks" (written before depth pruning existed) has none.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from pipeline.models.depth import drop_blocks
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec


def save_model(
    model: nn.Module,
    spec: ModelSpec,
    out_dir: Path,
    pruning_history: list | None = None,
    dropped_blocks: list[str] | None = None,
) -> None:
    torch.save(model.state_dict(), out_dir / "model.pt")
    description = {"spec": dataclasses.asdict(spec), "pruning_history": pruning_history or []}
    if dropped_blocks:  # only then: every other model's file keeps its bytes
        description["dropped_blocks"] = dropped_blocks
    (out_dir / "model.json").write_text(json.dumps(description, indent=2) + "\n")


def load_model(model_dir: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a saved model in eval mode. Call only on a verified artifact directory."""
    description = json.loads((model_dir / "model.json").read_text())
    fields = description["spec"]
    spec = ModelSpec(**{**fields, "image_size": tuple(fields["image_size"])})
    model = build_model(spec).eval()
    drop_blocks(model, description.get("dropped_blocks", []))
    replay_pruning(model, spec, description["pruning_history"])
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True, map_location="cpu"))
    return model, spec


def replay_pruning(model: nn.Module, spec: ModelSpec, pruning_history: list) -> None:
    """Remove from `model` (in place) the channels torch-pruning's `pruning_history` removed from its twin."""
    if pruning_history:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=spec.example_input())
        graph.load_pruning_history(pruning_history)


def architecture(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter and buffer's shape: equal for two models exactly when they have the same layers and widths."""
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
