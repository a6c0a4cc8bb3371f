"""Structured channel pruning with torch-pruning: in one shot, or gradually, with training between the steps.

torch-pruning's dependency graph removes whole channels (and the matching inputs of the layers that consume them),
so the pruned model is physically smaller. Every prunable layer loses the same share of its channels (or, with
global pruning, the least important channels across layers go); the classifier's outputs are never pruned.

Gradual pruning (as in Zhu & Gupta 2017, "To prune, or not to prune"; torch-pruning's `iterative_steps`): with
`steps` > 1, step k removes channels until ratio * k / steps of the original ones are gone, and the caller trains
between steps, so each step's channels are ranked on weights that have recovered from the step before. The last
step leaves the same channel counts as one shot at `ratio` (the architecture, hence the latency, is the same); only
which channels survive, and how the weights got there, differ.

The `params` these functions read are the prune stage's (importance, global_pruning, round_to).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp

from pipeline.models.factory import classifier_head


class RoundingPruner(tp.pruner.MetaPruner):
    """torch-pruning's pruner, except where `round_to` rounds a layer's channels to none.

    torch-pruning rounds the channels a layer keeps down to a multiple of `round_to`; where that leaves none, it
    prunes nothing in that layer. So a uniform ratio pruned *less* as it grew: CIFAR-10's resnet8 (16/32/64
    channels) with `round_to` 8 kept 8/16/32 at ratio 0.5, 16/8/24 at 0.6 and every channel at 0.9 (MACs 3.36 M,
    6.27 M, 12.75 M), and the uniform latency search measured those larger models as pruned ones. Here a layer
    keeps at least `round_to` channels (all of them when it has fewer), as the per-layer searches' counts do."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = max(kept - kept % round_to, min(round_to, current_channels))
        return current_channels - kept


def make_pruner(
    model: torch.nn.Module, example: torch.Tensor, num_classes: int, params: Any, ratio: float, steps: int = 1
) -> tp.pruner.MetaPruner:
    """A pruner that removes `ratio` of the channels of `model` (in place) over `steps` calls of `step()`."""
    return RoundingPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1 if params.importance == "l1" else 2),
        pruning_ratio=ratio,
        iterative_steps=steps,
        global_pruning=params.global_pruning,
        round_to=params.round_to or None,
        ignored_layers=[classifier_head(model, num_classes)],  # its outputs are the classes
    )


def prune_channels(
    model: torch.nn.Module, example: torch.Tensor, num_classes: int, params: Any, ratio: float | None = None
) -> list:
    """Remove `ratio` (default `params.ratio`) of the channels in place, in one shot; return torch-pruning's history
    (what pipeline/models/storage.py replays on a fresh model)."""
    pruner = make_pruner(model, example, num_classes, params, params.ratio if ratio is None else ratio)
    pruner.step()
    return pruner.pruning_history()


def schedule(ratio: float, steps: int, epochs: int, step_epochs: int | None = None) -> list[dict[str, Any]]:
    """The gradual schedule: for each step, the share of the original channels removed once it is done, and the
    fine-tune epochs that follow it.

    Without `step_epochs`, `epochs` is split as evenly as possible, the later steps taking the remainder, so one
    shot and gradual train equally long. With it, every step but the last is followed by `step_epochs` and the
    last, the most pruned, by the whole `epochs` (on digits an even split left the last step too few epochs to
    recover: BENCHMARKS.md)."""
    if step_epochs is not None:
        return [
            {"step": k, "ratio": ratio * k / steps, "epochs": epochs if k == steps else step_epochs}
            for k in range(1, steps + 1)
        ]
    base, extra = divmod(epochs, steps)
    return [
        {"step": k, "ratio": ratio * k / steps, "epochs": base + (1 if k > steps - extra else 0)}
        for k in range(1, steps + 1)
    ]
