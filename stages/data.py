"""data: read the dataset once, split it, fingerprint it, and store uint8 arrays plus normalization stats.

Sources: scikit-learn's embedded digits (the default, no download), an image folder, or the official
CIFAR-10 / MNIST / Fashion-MNIST binary files (pipeline/datasets/). Images are decoded here, once; later stages
read the cached uint8 arrays (pipeline.datasets.artifact.load). Every dataset shares one preprocessing:
`input = (pixel / 255 - mean) / std` per channel, NCHW float32, with mean and std from the train split
(digits' 0..16 pixels are scaled to 0..255).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import Artifact
from pipeline.datasets import catalog, splits
from pipeline.datasets.catalog import DATASETS, DOWNLOADABLE
from pipeline.errors import ConfigError, require

NAME = "data"
SECTION = "data"
VERSION = 4
INPUTS: tuple[str, ...] = ()
TRAINS = False
OUTPUTS = ("arrays.npz", "dataset.json")


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "digits"  # digits (embedded), imagefolder, cifar10, mnist or fashion_mnist
    root: str | None = dataclasses.field(default=None, metadata={"path": True})  # folder of an on-disk dataset
    image_size: int | None = None  # imagefolder: resize to this square size; null: the images' own (one) size
    test_fraction: float = 0.2  # share of each class held out as the test split when the source has none
    # Share of each class of the training split held out from all training (teacher, distill, prune): every choice
    # the pipeline makes (edge model, quantization variants, anything tuned) is made on these images, never on the
    # test split, which is only reported.
    validation_fraction: float = 0.1
    download: bool = False  # cifar10/mnist/fashion_mnist: fetch the official files into root (checksums verified)
    seed: int = 0  # seed of the stratified split

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ConfigError(f"data.name={self.name!r} is not a known dataset; available: {', '.join(DATASETS)}")
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "a number in (0, 1)")
        require(
            0.0 < self.validation_fraction < 1.0,
            "data.validation_fraction",
            self.validation_fraction,
            "a number in (0, 1): every choice is made on the validation split",
        )
        require(self.image_size is None or self.image_size >= 4, "data.image_size", self.image_size, "null or >= 4")
        require(self.name == "digits" or self.root, "data.root", self.root, f"the folder holding the {self.name} files")
        require(
            not self.download or self.name in DOWNLOADABLE,
            "data.download",
            self.download,
            f"false for {self.name} (only {', '.join(DOWNLOADABLE)} can be downloaded)",
        )


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """Content hash of the source data: part of the cache key, so changed data re-runs everything."""
    return catalog.fingerprint(params.name, params.root, params.download, state_dir)


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    raw = catalog.read(params.name, Path(params.root) if params.root else None, params.image_size)
    arrays, split = splits.split_test(raw, params.test_fraction, params.seed)
    splits.hold_out_validation(arrays, split, params.validation_fraction, params.seed)
    train_pixels = arrays["train_images"].astype(np.float32) / 255.0
    mean = train_pixels.mean(axis=(0, 2, 3), dtype=np.float64).tolist()
    std = train_pixels.std(axis=(0, 2, 3), dtype=np.float64).tolist()
    np.savez(out_dir / "arrays.npz", **arrays)
    shape = list(arrays["train_images"].shape[1:])
    description = {
        "name": params.name,
        "class_names": raw.class_names,
        "image_shape": shape,
        "mean": mean,
        "std": std,
        "preprocessing": "input = (pixel / 255 - mean) / std per channel; NCHW float32",
        "split": split,
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    n_train, n_test, n_val = len(arrays["train_labels"]), len(arrays["test_labels"]), len(arrays["val_labels"])
    return {
        "train_size": n_train,
        "test_size": n_test,
        "validation_size": n_val,
        "classes": len(raw.class_names),
        "image_shape": shape,
        "summary": f"{params.name}: {n_train} train / {n_val} validation / {n_test} test images of {shape}, "
        f"{len(raw.class_names)} classes",
    }
