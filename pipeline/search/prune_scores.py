"""What a per-layer configuration is worth, on validation, before any fine-tune (`prune.search_score: validation`).

The per-layer search's steps each thin one group; ranking them by weight magnitude per millisecond saved said little
about accuracy on CIFAR-10 (BENCHMARKS.md: the per-layer model lost 2.2 points to the uniform one at the same
budget). NetAdapt scores each proposed step by validation accuracy after a short fine-tune; EagleEye (Li et al.
2020) showed that re-estimating the pruned network's BatchNorm statistics on a few training batches, with no
training at all, already ranks candidates much as their fine-tuned accuracy does, for a fraction of the cost. That
is what this does for each configuration the search considers:

1. prune a copy of the student to the configuration (the same channels the stage would remove);
2. re-estimate every BatchNorm layer's running mean and variance on BN_IMAGES training images (a fixed sample,
   drawn with the prune stage's seed, not augmented), averaged over the batches rather than by momentum;
3. measure accuracy and cross-entropy on the validation split, never on test.

A step's cost is the validation accuracy it loses per millisecond it saves, ties broken by the cross-entropy it
adds per millisecond (on a small validation split many steps lose the same number of images).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.datasets.artifact import Dataset, read_rows
from pipeline.search.prune_layers import Channels, Group
from pipeline.training.augment import normalize
from pipeline.training.loop import predict

BN_IMAGES = 1024  # training images the BatchNorm statistics are re-estimated on (EagleEye used a few thousand)
BN_BATCH = 64


class ValidationScores:
    """`scores(channels)` -> {"accuracy", "loss"} of the student pruned to `channels`, BatchNorm re-estimated, on the
    validation split; each configuration is scored once. `prune(model, channels)` prunes a model in place."""

    def __init__(self, student: nn.Module, dataset: Dataset, seed: int, prune: Callable[[nn.Module, Channels], None]):
        self.student, self.dataset, self.prune = student, dataset, prune
        count = min(BN_IMAGES, len(dataset.train_labels))
        sample = np.sort(np.random.default_rng(seed).choice(len(dataset.train_labels), count, replace=False))
        self.bn_images = torch.from_numpy(read_rows(dataset.train_images, sample))
        self.labels = torch.as_tensor(dataset.val_labels)
        self.memo: dict[tuple, dict[str, float]] = {}
        self.seconds = 0.0

    def __call__(self, channels: Channels) -> dict[str, float]:
        key = tuple(sorted(channels.items()))
        if key not in self.memo:
            started = time.perf_counter()
            model = copy.deepcopy(self.student)
            self.prune(model, channels)
            recalibrate_batchnorm(model, self.bn_images, self.dataset.norm)
            logits = predict(model, self.dataset.val_images, self.dataset.norm)
            self.memo[key] = {
                "accuracy": (logits.argmax(1) == self.labels).float().mean().item(),
                "loss": nn.functional.cross_entropy(logits, self.labels).item(),
            }
            self.seconds += time.perf_counter() - started
        return self.memo[key]

    def cost(self, group: Group, channels: Channels, count: int, saved: float) -> tuple[float, float]:
        """prune_layers.StepCost: (accuracy lost per ms saved, cross-entropy added per ms saved)."""
        now, after = self(channels), self({**channels, group.name: count})
        return (now["accuracy"] - after["accuracy"]) / saved, (after["loss"] - now["loss"]) / saved

    def summary(self) -> dict[str, Any]:
        scored, seconds = len(self.memo), round(self.seconds, 3)
        return {"score": "validation", "bn_images": len(self.bn_images), "scored": scored, "seconds": seconds}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, norm: tuple) -> None:
    """Every BatchNorm's running statistics re-estimated on `images` (uint8), as a cumulative average over batches;
    the rest of the model stays in eval mode (no dropout)."""
    device = next(model.parameters()).device
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average, not an exponential one
        layer.train()
    for start in range(0, len(images), BN_BATCH):
        model(normalize(images[start : start + BN_BATCH].to(device), *norm))
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
