"""Depth pruning: whole residual blocks removed (`prune.drop_blocks`), where thinning channels cannot go.

At batch 1 on a CPU every operator has a fixed cost, and channel pruning keeps every operator: on the Xeon of
BENCHMARKS.md ("Removing a residual block") the distilled CIFAR-10 resnet8_s2 measured 0.058 ms and without its
first stage's block 0.037 ms in one bench, where 30% of every layer's channels removed instead (half the MACs of the
latter) measured 0.045 ms in the prune stage. A block whose shortcut is the identity computes x + f(x); without it
the network computes x there, and the tensors before and after keep their shapes, so the rest of the model loads
and runs unchanged. In a deep ResNet removing one block costs little (Veit et al. 2016: residual networks behave
like ensembles of shallower paths); in resnet8_s2, one block a stage, it cost 0.75 -> 0.27 validation accuracy
before any fine-tune, and the 5-epoch distillation fine-tune brought it back to 0.77.

Droppable here: the built-in BasicBlock with an identity shortcut and MobileNetV2's InvertedResidual with its
residual sum (pipeline/models/cifar.py). A removed block becomes nn.Identity at the same place, so every other
module keeps its name: the state_dict, torch-pruning's history and the export see the same names as before.
"""

from __future__ import annotations

from torch import nn

from pipeline.models.cifar import MODELS, BasicBlock, InvertedResidual
from pipeline.models.spec import ModelSpec

# prune.drop_blocks: the prune stage tries each depth and keeps the best (pipeline/training/prune_arms.py)
AUTO = "auto"


def droppable_blocks(model: nn.Module) -> list[str]:
    """The names of the blocks of `model` that can be removed, in the model's order: their output is their input
    plus a residual of the same shape."""
    names = []
    for name, module in model.named_modules():
        basic = isinstance(module, BasicBlock) and isinstance(module.shortcut, nn.Identity)
        inverted = isinstance(module, InvertedResidual) and module.residual
        if basic or inverted:
            names.append(name)
    return names


def blocks_asked(asked: int | str, droppable: list[str], budget_ms: float | None) -> list[str]:
    """The droppable blocks prune.drop_blocks reaches: its first N; with auto and a latency budget all of them (the
    deepest cut the prune stage may try), without a budget none (at a fixed ratio a block removed only costs
    accuracy)."""
    if asked == AUTO:
        return list(droppable) if budget_ms is not None else []
    return list(droppable[:asked])


def built_in_droppable(name: str, width: int | None) -> list[str]:
    """droppable_blocks of the built-in model `name` at `width`, known from the config alone: which blocks have an
    identity shortcut depends on the architecture and its widths, not on the images or the classes. None for a
    library's or a user's model (depth pruning does not know their blocks)."""
    if name not in MODELS:
        return []
    return droppable_blocks(MODELS[name](ModelSpec(name, width, 3, 10, (32, 32))))


def too_few_blocks(asked: int, model_label: str, droppable: list[str]) -> str:
    """The one line for a prune.drop_blocks over the blocks a model has (`droppable`: all of them)."""
    names = f" ({', '.join(droppable)})" if droppable else ""
    return (
        f"prune.drop_blocks={asked}: {model_label} has {len(droppable) or 'no'} residual block"
        f"{'s' * (len(droppable) != 1)} with an identity shortcut to drop{names}; set prune.drop_blocks to at most "
        f"{len(droppable)} (depth pruning knows the built-in ResNets' and MobileNetV2's blocks)"
    )


def drop_blocks(model: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Replace each named block of `model` by the identity, in place; a ValueError for a name that is not one of
    droppable_blocks (a saved model's list is checked against the architecture it is replayed on)."""
    droppable = droppable_blocks(model)
    for name in names:
        if name not in droppable:
            known = ", ".join(droppable) or "none"
            raise ValueError(f"block {name!r} cannot be dropped from this model: droppable blocks {known}")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
