"""data: read the dataset once, split it, fingerprint it, and store uint8 arrays plus normalization stats.

Sources: scikit-learn's embedded digits (the default, no download), an image folder, or the official
CIFAR-10 / MNIST / Fashion-MNIST binary files. Images are decoded here, once; later stages read the
cached uint8 arrays. Every dataset shares one preprocessing: `input = (pixel / 255 - mean) / std` per
channel, NCHW float32, with mean and std from the train split (digits' 0..16 pixels are scaled to 0..255).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import datasets
from pipeline.cache import Artifact, sha256_file
from pipeline.errors import ConfigError, require

NAME = "data"
SECTION = "data"
VERSION = 3
INPUTS: tuple[str, ...] = ()
TRAINS = False
OUTPUTS = ("arrays.npz", "dataset.json")
DATASETS = ("digits", "imagefolder", "cifar10", "mnist", "fashion_mnist")
DOWNLOADABLE = ("cifar10", "mnist", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "digits"  # digits (embedded), imagefolder, cifar10, mnist or fashion_mnist
    root: str | None = dataclasses.field(default=None, metadata={"path": True})  # folder of an on-disk dataset
    image_size: int | None = None  # imagefolder: resize to this square size; null: the images' own (one) size
    val_fraction: float = 0.2  # share of each class held out for evaluation when the source has no test split
    # Share of each class of the training split held out from all training (teacher, distill, prune), so that
    # choices such as the quantization search are made on images no model learned and never on the test split.
    validation_fraction: float = 0.0
    download: bool = False  # cifar10/mnist/fashion_mnist: fetch the official files into root (checksums verified)
    seed: int = 0  # seed of the stratified split

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ConfigError(f"data.name={self.name!r} is not a known dataset; available: {', '.join(DATASETS)}")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a number in (0, 1)")
        require(
            0.0 <= self.validation_fraction < 1.0,
            "data.validation_fraction",
            self.validation_fraction,
            "a number in [0, 1) (0: no validation split)",
        )
        require(self.image_size is None or self.image_size >= 4, "data.image_size", self.image_size, "null or >= 4")
        require(self.name == "digits" or self.root, "data.root", self.root, f"the folder holding the {self.name} files")
        require(
            not self.download or self.name in DOWNLOADABLE,
            "data.download",
            self.download,
            f"false for {self.name} (only {', '.join(DOWNLOADABLE)} can be downloaded)",
        )


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


def _load_digits() -> datasets.RawDataset:
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return datasets.RawDataset(
        pixels, digits.target.astype(np.int64), None, None, [str(c) for c in digits.target_names]
    )


def _read(params: Params) -> datasets.RawDataset:
    root = Path(params.root) if params.root else None
    if params.name == "digits":
        return _load_digits()
    if params.name == "imagefolder":
        return datasets.read_imagefolder(root, params.image_size, workers=min(os.cpu_count() or 1, 8))
    if params.name == "cifar10":
        return datasets.read_cifar10(root)
    return datasets.read_mnist(root, fashion=params.name == "fashion_mnist")


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """Content hash of the source data: part of the cache key, so changed data re-runs everything.

    File hashes are remembered by (size, mtime) in `state_dir`, as dvc does, so a re-run with
    untouched files reads none of them.
    """
    if params.name == "digits":
        raw = _load_digits()
        digest = hashlib.sha256(raw.train_images.tobytes() + raw.train_labels.tobytes())
        return {"source": "sklearn digits", "source_sha256": digest.hexdigest()}
    root = Path(params.root)
    if params.download:
        datasets.download(params.name, root)
    files = datasets.source_files(params.name, root)
    known = _read_hash_state(state_dir)
    digest = hashlib.sha256()
    rehashed = False
    for path in files:
        stat = path.stat()
        entry = known.get(str(path))
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = known[str(path)] = [stat.st_size, stat.st_mtime_ns, sha256_file(path)]
            rehashed = True
        digest.update(f"{path.relative_to(root).as_posix()}\0{entry[2]}\n".encode())
    if rehashed:  # 60,000 CIFAR entries are ~9 MB of JSON: rewrite them only when something changed
        _write_hash_state(state_dir, known)
    return {"source": str(root), "files": len(files), "source_sha256": digest.hexdigest()}


def _read_hash_state(state_dir: Path) -> dict[str, list]:
    try:
        state = json.loads((state_dir / "file-hashes.json").read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # a lost or damaged hash cache only costs re-hashing


def _write_hash_state(state_dir: Path, known: dict[str, list]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temp = state_dir / f"file-hashes.json.{os.getpid()}"
    temp.write_text(json.dumps(known))
    os.replace(temp, state_dir / "file-hashes.json")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the kept and held-out parts, each class split in the same proportion; sorted, deterministic."""
    rng = np.random.default_rng(seed)
    kept, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held_out = max(1, round(len(members) * fraction))
        held_out.append(members[:n_held_out])
        kept.append(members[n_held_out:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held_out))


def _split(raw: datasets.RawDataset, params: Params) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if raw.test_images is not None:
        arrays = {
            "train_images": raw.train_images,
            "train_labels": raw.train_labels,
            "test_images": raw.test_images,
            "test_labels": raw.test_labels,
        }
        return arrays, {"method": "the source's own train/test split"}
    train_index, test_index = stratified_split(raw.train_labels, params.val_fraction, params.seed)
    arrays = {
        "train_images": raw.train_images[train_index],
        "train_labels": raw.train_labels[train_index],
        "test_images": raw.train_images[test_index],
        "test_labels": raw.train_labels[test_index],
        "train_index": train_index,
        "test_index": test_index,
    }
    return arrays, {"method": "stratified", "held_out_fraction": params.val_fraction, "seed": params.seed}


def _hold_out_validation(arrays: dict[str, np.ndarray], split: dict[str, Any], params: Params) -> None:
    """Move `validation_fraction` of each class of the training split into val_images/val_labels (in place).

    Seeded apart from the test split (seed + 1) so the two draws are independent."""
    labels = arrays["train_labels"]
    if params.validation_fraction == 0:
        kept, held_out = np.arange(len(labels)), np.arange(0)
    else:
        kept, held_out = stratified_split(labels, params.validation_fraction, params.seed + 1)
    images = arrays["train_images"]
    arrays.update(
        train_images=images[kept],
        train_labels=labels[kept],
        val_images=images[held_out],
        val_labels=labels[held_out],
        val_index=held_out,  # positions in the training split before the validation images were taken out
    )
    split["validation"] = {"fraction": params.validation_fraction, "images": len(held_out), "seed": params.seed + 1}


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    raw = _read(params)
    arrays, split = _split(raw, params)
    _hold_out_validation(arrays, split, params)
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


def load(artifact: Artifact) -> Dataset:
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
