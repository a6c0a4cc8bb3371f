"""The data stage's artifact as the other stages read it: memory-mapped uint8 images, labels, class names and
normalization.

Each split's images are one raw `.npy` file (uint8, NCHW), opened memory-mapped: loading the artifact reads no
pixels, so a set larger than RAM (50,000 images at 224 px are 7.5 GB) trains and evaluates without being loaded
whole. Consumers read by batch with `read_rows`; labels and split indices are small and live in `labels.npz`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline.cache import Artifact

SPLITS = ("train", "val", "test")
CHUNK_BYTES = 32 << 20  # images read or written at once by the data stage: 213 images at 224 px
LABELS_FILE = "labels.npz"  # {split}_labels, and the split's indices into the source where it was drawn from one


def images_file(split: str) -> str:
    return f"{split}_images.npy"


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # uint8 (N, C, H, W), memory-mapped (np.memmap) when loaded from an artifact
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    val_images: np.ndarray  # held out from training (data.validation_fraction)
    val_labels: np.ndarray
    class_names: list[str]
    mean: list[float]  # per channel, of train pixels / 255
    std: list[float]

    @property
    def norm(self) -> tuple[list[float], list[float]]:
        return self.mean, self.std


def load_dataset(artifact: Artifact) -> Dataset:
    """The dataset from a verified data artifact: images memory-mapped read-only, nothing pickled."""
    description = json.loads(artifact.file("dataset.json").read_text())
    images = {split: open_images(artifact.file(images_file(split))) for split in SPLITS}
    with np.load(artifact.file(LABELS_FILE), allow_pickle=False) as labels:
        return Dataset(
            train_images=images["train"],
            train_labels=labels["train_labels"],
            test_images=images["test"],
            test_labels=labels["test_labels"],
            val_images=images["val"],
            val_labels=labels["val_labels"],
            class_names=description["class_names"],
            mean=description["mean"],
            std=description["std"],
        )


def open_images(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def read_rows(images: np.ndarray, index: np.ndarray | slice) -> np.ndarray:
    """Rows `index` of `images` as a new in-memory array.

    A memory-mapped file is read through a mapping opened for this batch alone and closed after: pages touched
    through a mapping count as the process's resident memory for as long as it stays mapped, so an epoch read
    through one long-lived mapping would end with the whole set resident. Closed, the pages stay in the kernel's
    page cache only, which it reclaims when it needs the memory.
    """
    if isinstance(images, np.memmap) and images.filename is not None:
        whole = open_images(Path(images.filename))
        if whole.shape == images.shape and whole.strides == images.strides and whole.dtype == images.dtype:
            return np.array(whole[index])  # np.array copies: nothing may keep the batch's mapping open
    return np.array(images[index])


def create_images(path: Path, shape: tuple[int, ...]) -> None:
    """A new uint8 `.npy` file of `shape`, allocated on disk (sparse until written) and not mapped afterwards."""
    allocated = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del allocated  # unmapped: rows are written with write_rows


def write_rows(path: Path, start: int, rows: np.ndarray) -> None:
    """Rows `start:start + len(rows)` of the `.npy` file at `path`, written through a mapping of this call alone
    (see read_rows: a long-lived mapping would keep every written page resident)."""
    target = np.load(path, mmap_mode="r+", allow_pickle=False)
    target[start : start + len(rows)] = rows
    target.flush()
    del target


def write_split(path: Path, source: np.ndarray, rows: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> None:
    """The `.npy` file of `source[rows]`, copied a chunk of at most `chunk_bytes` at a time."""
    create_images(path, (len(rows), *source.shape[1:]))
    per_chunk = _rows_per_chunk(source, chunk_bytes)
    for start in range(0, len(rows), per_chunk):
        write_rows(path, start, read_rows(source, rows[start : start + per_chunk]))


def pixel_statistics(images: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel / 255, read at most `chunk_bytes` of images at a time.

    Sums of pixels and of their squares are exact integers (a square, at most 255², fits uint16; the sums are
    int64), so the result does not depend on the chunk size and needs no float copy of the set."""
    total = np.zeros(images.shape[1], dtype=np.int64)
    squares = np.zeros(images.shape[1], dtype=np.int64)
    per_chunk = _rows_per_chunk(images, chunk_bytes)
    for start in range(0, len(images), per_chunk):
        pixels = read_rows(images, slice(start, start + per_chunk)).astype(np.uint16)
        total += pixels.sum(axis=(0, 2, 3), dtype=np.int64)
        squares += (pixels * pixels).sum(axis=(0, 2, 3), dtype=np.int64)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    variance = np.maximum(squares / count - mean * mean, 0.0)
    return (mean / 255.0).tolist(), (np.sqrt(variance) / 255.0).tolist()


def _rows_per_chunk(images: np.ndarray, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, int(np.prod(images.shape[1:]))))
