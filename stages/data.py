"""data: read the dataset once, split it, fingerprint it, and store uint8 images plus normalization stats.

Sources: scikit-learn's embedded digits (the default, no download), an image folder, or the official
CIFAR-10 / MNIST / Fashion-MNIST binary files (pipeline/datasets/). Images are decoded here, once, and each split
is stored as one raw uint8 `.npy` file that later stages open memory-mapped (pipeline.datasets.artifact), so a set
larger than RAM is read a batch at a time. Every dataset shares one preprocessing:
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
from pipeline.datasets.artifact import LABELS_FILE, SPLITS, images_file, open_images, pixel_statistics, write_split
from pipeline.datasets.catalog import DATASETS, DOWNLOADABLE
from pipeline.errors import ConfigError, require

NAME = "data"
SECTION = "data"
VERSION = 5  # 5: one memory-mapped .npy per split, labels.npz; image_size resizes and center-crops
INPUTS: tuple[str, ...] = ()
TRAINS = False
OUTPUTS = (*(images_file(split) for split in SPLITS), LABELS_FILE, "dataset.json")


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "digits"  # digits (embedded), imagefolder, cifar10, mnist or fashion_mnist
    root: str | None = dataclasses.field(default=None, metadata={"path": True})  # folder of an on-disk dataset
    # imagefolder: the square size images are stored at (shorter side resized to image_size / crop_fraction, then
    # center-cropped, as torchvision's reference evaluation transform); null: the images' own (one) size
    image_size: int | None = None
    crop_fraction: float = 0.875  # with image_size: share of the resized shorter side kept by the center crop
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
        require(0.0 < self.crop_fraction <= 1.0, "data.crop_fraction", self.crop_fraction, "a number in (0, 1]")
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
    root = Path(params.root) if params.root else None
    raw = catalog.read(params.name, root, params.image_size, params.crop_fraction, out_dir)
    plan = splits.plan_splits(raw, params.test_fraction, params.validation_fraction, params.seed)
    for split, (source, rows) in plan.rows.items():
        write_split(out_dir / images_file(split), source, rows)
    for decoded in out_dir.glob("source-*.npy"):  # an image folder's decoded files, now copied into the splits
        decoded.unlink()
    np.savez(out_dir / LABELS_FILE, **plan.arrays)
    mean, std = pixel_statistics(open_images(out_dir / images_file("train")))
    shape = list(raw.train_images.shape[1:])
    description = {
        "name": params.name,
        "class_names": raw.class_names,
        "image_shape": shape,
        "mean": mean,
        "std": std,
        "preprocessing": "input = (pixel / 255 - mean) / std per channel; NCHW float32",
        "split": plan.description,
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    n_train, n_test, n_val = (len(plan.arrays[f"{split}_labels"]) for split in ("train", "test", "val"))
    return {
        "train_size": n_train,
        "test_size": n_test,
        "validation_size": n_val,
        "classes": len(raw.class_names),
        "image_shape": shape,
        "summary": f"{params.name}: {n_train} train / {n_val} validation / {n_test} test images of {shape}, "
        f"{len(raw.class_names)} classes",
    }
