"""data: load the dataset, split it, fingerprint it, and store uint8 arrays plus normalization stats.

The embedded default is scikit-learn's digits (1,797 8x8 grayscale images, no download). Pixels
(0..16) are scaled to uint8 0..255 so every dataset shares one preprocessing:
`input = (pixel / 255 - mean) / std` per channel, NCHW float32, with mean and std from the train split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import Artifact
from pipeline.errors import ConfigError, require

NAME = "data"
SECTION = "data"
VERSION = 1
INPUTS: tuple[str, ...] = ()
OUTPUTS = ("arrays.npz", "dataset.json")
DATASETS = ("digits",)


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "digits"  # dataset: digits (embedded)
    root: str | None = dataclasses.field(default=None, metadata={"path": True})  # on-disk datasets (unused by digits)
    test_fraction: float = 0.2  # share of each class held out for testing (datasets without a test split)
    seed: int = 0  # seed of the stratified train/test split

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ConfigError(f"data.name={self.name!r} is not a known dataset; available: {', '.join(DATASETS)}")
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "a number in (0, 1)")


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    mean: list[float]  # per channel, of train pixels / 255
    std: list[float]

    @property
    def norm(self) -> tuple[list[float], list[float]]:
        return self.mean, self.std


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return pixels, digits.target.astype(np.int64), [str(c) for c in digits.target_names]


def fingerprint(params: Params) -> dict[str, Any]:
    """Content hash of the source data: part of the cache key, so changed data re-runs everything."""
    images, labels, class_names = _load_digits()
    digest = hashlib.sha256(images.tobytes() + labels.tobytes() + json.dumps(class_names).encode())
    return {"source_sha256": digest.hexdigest()}


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with each class split in the same proportion; sorted, deterministic."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    images, labels, class_names = _load_digits()
    train_index, test_index = stratified_split(labels, params.test_fraction, params.seed)
    train_pixels = images[train_index].astype(np.float64) / 255.0
    mean = train_pixels.mean(axis=(0, 2, 3)).tolist()
    std = train_pixels.std(axis=(0, 2, 3)).tolist()
    np.savez(
        out_dir / "arrays.npz",
        train_images=images[train_index],
        train_labels=labels[train_index],
        test_images=images[test_index],
        test_labels=labels[test_index],
        train_index=train_index,
        test_index=test_index,
    )
    description = {
        "name": params.name,
        "class_names": class_names,
        "image_shape": list(images.shape[1:]),
        "mean": mean,
        "std": std,
        "preprocessing": "input = (pixel / 255 - mean) / std per channel; NCHW float32",
        "split": {"method": "stratified", "test_fraction": params.test_fraction, "seed": params.seed},
        **fingerprint(params),
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return {
        "train_size": len(train_index),
        "test_size": len(test_index),
        "classes": len(class_names),
        "image_shape": list(images.shape[1:]),
        "summary": f"{params.name}: {len(train_index)} train / {len(test_index)} test images, "
        f"{len(class_names)} classes",
    }


def load(artifact: Artifact) -> Dataset:
    """The dataset from a verified data artifact (no pickle: allow_pickle=False)."""
    description = json.loads(artifact.file("dataset.json").read_text())
    with np.load(artifact.file("arrays.npz"), allow_pickle=False) as arrays:
        return Dataset(
            train_images=arrays["train_images"],
            train_labels=arrays["train_labels"],
            test_images=arrays["test_images"],
            test_labels=arrays["test_labels"],
            class_names=description["class_names"],
            mean=description["mean"],
            std=description["std"],
        )
