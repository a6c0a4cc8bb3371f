"""Pruning each of torch-pruning's dependency groups to its own channel count (the per-layer search's configurations).

A group is what torch-pruning removes together: a layer's output channels with the inputs of the layers that read
them, and, across a residual sum, every conv whose outputs are added (one group, one count). The groups are those
of the MetaPruner the uniform path builds (pipeline/models/pruning.py: same importance, classifier head ignored),
named by their root module, e.g. "features.0.0". Within a group the channels removed are the least important by
that importance (GroupMagnitudeImportance, normalized per group so that groups compare), as the uniform path picks.
Groups whose layers are split into channel groups (grouped convolutions other than depthwise) are left whole: their
counts must stay a multiple of the grouping, which this search does not model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pipeline.models.pruning import make_pruner


class GroupPruner:
    """Prunes `model` in place to `channels` (group name -> count kept) over `steps` calls of `step()`;
    `pruning_history()` is what pipeline/models/storage.py replays. The same two calls as torch-pruning's MetaPruner,
    so the stage uses either. In several steps each group loses an equal share of the channels it gives up at each
    step (step_counts), and the channels are ranked again at every step: on the weights the fine-tune moved."""

    def __init__(
        self, model: nn.Module, example: torch.Tensor, num_classes: int, params: Any, channels: dict, steps: int = 1
    ):
        self.model, self.channels, self.steps, self.done = model, dict(channels), steps, 0
        self.round_to = params.round_to
        self.pruner = make_pruner(model, example, num_classes, params, 0.0)
        self.graph = self.pruner.DG
        modules = dict(model.named_modules())
        unknown = sorted(set(self.channels) - set(modules))
        if unknown:
            raise ValueError(f"no prunable group {unknown[0]!r} in this model: known {', '.join(self.group_names())}")
        self.full = {name: self.graph.get_out_channels(modules[name]) for name in self.channels}

    def step(self) -> None:
        self.done += 1
        modules = dict(self.model.named_modules())
        for name, keep in sorted(step_counts(self.full, self.channels, self.done, self.steps, self.round_to).items()):
            root = modules[name]
            current = self.graph.get_out_channels(root)
            if keep >= current:
                continue
            scores = self.scores(root)
            least = torch.argsort(scores, stable=True)[: current - keep].tolist()
            # A group built for these indices: group.prune(idxs) would also record the full group in the history.
            self.graph.get_pruning_group(root, self.out_channels_fn(root), sorted(least)).prune()

    def counts(self) -> dict[str, int]:
        """The channel count each of `channels`' groups has now (`full` before the first step)."""
        modules = dict(self.model.named_modules())
        return {name: self.graph.get_out_channels(modules[name]) for name in self.full}

    def pruning_history(self) -> list:
        return self.graph.pruning_history()

    def out_channels_fn(self, root: nn.Module):
        return self.graph.get_pruner_of_module(root).prune_out_channels

    def scores(self, root: nn.Module) -> torch.Tensor:
        """Each output channel's importance in `root`'s group, normalized within the group (mean 1)."""
        full = list(range(self.graph.get_out_channels(root)))
        return self.pruner.importance(self.graph.get_pruning_group(root, self.out_channels_fn(root), full)).cpu()

    def groups(self) -> list[tuple[str, nn.Module]]:
        """(name, root module) of every group this search may prune, in the graph's order."""
        names = {module: name for name, module in self.model.named_modules()}
        grouped = set(self.pruner.out_channel_groups) | set(self.pruner.in_channel_groups)
        found = []
        for group in self.graph.get_all_groups(self.pruner.ignored_layers, self.pruner.root_module_types):
            if any(dep.target.module in grouped for dep, _ in group):
                continue
            root = group[0].dep.target.module
            found.append((names[root], root))
        return found

    def group_names(self) -> list[str]:
        return [name for name, _ in self.groups()]


def step_counts(full: dict, final: dict, step: int, steps: int, round_to: int = 0) -> dict[str, int]:
    """Each group's channel count after `step` of `steps`: `step / steps` of the way from `full` to `final`, rounded
    up to a multiple of `round_to` (CPU kernels like them; never below `final`, never above `full`). The last step
    is `final` exactly."""
    if step >= steps:
        return dict(final)
    counts = {}
    for name, keep in final.items():
        count = math.ceil(full[name] - (full[name] - keep) * step / steps)
        if round_to:
            count = math.ceil(count / round_to) * round_to
        counts[name] = max(keep, min(full[name], count))
    return counts


def group_importance(model: nn.Module, example: torch.Tensor, num_classes: int, params: Any) -> dict[str, list]:
    """Group name -> its channels' normalized importance, ascending (the first are the first to go)."""
    pruner = GroupPruner(model, example, num_classes, params, {})
    return {name: sorted(pruner.scores(root).tolist()) for name, root in pruner.groups()}


def channel_counts(model: nn.Module, example: torch.Tensor, num_classes: int, params: Any) -> dict[str, int]:
    """Group name -> its current channel count."""
    pruner = GroupPruner(model, example, num_classes, params, {})
    return {name: pruner.graph.get_out_channels(root) for name, root in pruner.groups()}


def prune_groups(model: nn.Module, example: torch.Tensor, num_classes: int, params: Any, channels: dict) -> list:
    """Prune `model` in place to `channels` (group name -> count kept); torch-pruning's history."""
    pruner = GroupPruner(model, example, num_classes, params, channels)
    pruner.step()
    return pruner.pruning_history()
