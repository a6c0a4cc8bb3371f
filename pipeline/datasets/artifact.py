"""The data stage's artifact as the other stages read it: uint8 arrays, class names and normalization."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from pipeline.cache import Artifact


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    val_images: np.ndarray  # held out from training (data.validation_fraction); empty when 0
    val_labels: np.ndarray
    class_names: list[str]
    mean: list[float]  # per channel, of train pixels / 255
    std: list[float]

    @property
    def norm(self) -> tuple[list[float], list[float]]:
        return self.mean, self.std


def load_dataset(artifact: Artifact) -> Dataset:
    """The dataset from a verified data artifact (no pickle: allow_pickle=False)."""
    description = json.loads(artifact.file("dataset.json").read_text())
    with np.load(artifact.file("arrays.npz"), allow_pickle=False) as arrays:
        return Dataset(
            train_images=arrays["train_images"],
            train_labels=arrays["train_labels"],
            test_images=arrays["test_images"],
            test_labels=arrays["test_labels"],
            val_images=arrays["val_images"],
            val_labels=arrays["val_labels"],
            class_names=description["class_names"],
            mean=description["mean"],
            std=description["std"],
        )
