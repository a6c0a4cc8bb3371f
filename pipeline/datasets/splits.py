"""Seeded, stratified splits: the test split of a source without one, and the validation split held out of
training. Only indices are computed here: the data stage copies the images split by split, a chunk at a time."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline.datasets.sources import RawDataset


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


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which source images each split takes (read and written later, chunk by chunk), and the small arrays stored
    beside them: each split's labels and the indices that say where the splits were drawn from."""

    rows: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (source images, row indices into them)
    arrays: dict[str, np.ndarray]  # {split}_labels; train_index/test_index/val_index
    description: dict[str, Any]


def plan_splits(raw: RawDataset, test_fraction: float, validation_fraction: float, seed: int) -> SplitPlan:
    """Train, validation and test: the source's own test split or a stratified `test_fraction` of each class held
    out of its training images; then a stratified `validation_fraction` of each class of the training split held
    out of all training, seeded apart from the test split (seed + 1) so the two draws are independent."""
    labels = raw.train_labels
    if raw.test_images is not None:
        training = np.arange(len(labels))
        test = (raw.test_images, np.arange(len(raw.test_labels)))
        test_labels, arrays = raw.test_labels, {}
        description = {"method": "the source's own train/test split"}
    else:
        training, test_index = stratified_split(labels, test_fraction, seed)
        test = (raw.train_images, test_index)
        test_labels, arrays = labels[test_index], {"train_index": training, "test_index": test_index}
        description = {"method": "stratified", "held_out_fraction": test_fraction, "seed": seed}
    kept, held_out = stratified_split(labels[training], validation_fraction, seed + 1)
    # val_index: positions in the training split before the validation images were taken out
    arrays |= {"val_index": held_out, "train_labels": labels[training[kept]], "val_labels": labels[training[held_out]]}
    arrays["test_labels"] = test_labels
    description["validation"] = {"fraction": validation_fraction, "images": len(held_out), "seed": seed + 1}
    rows = {"train": (raw.train_images, training[kept]), "val": (raw.train_images, training[held_out]), "test": test}
    return SplitPlan(rows, arrays, description)
