"""Seeded, stratified splits: the test split of a source without one, and the validation split held out of
training."""

from __future__ import annotations

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


def split_test(raw: RawDataset, test_fraction: float, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train and test arrays: the source's own split, or a stratified `test_fraction` of each class held out."""
    if raw.test_images is not None:
        arrays = {
            "train_images": raw.train_images,
            "train_labels": raw.train_labels,
            "test_images": raw.test_images,
            "test_labels": raw.test_labels,
        }
        return arrays, {"method": "the source's own train/test split"}
    train_index, test_index = stratified_split(raw.train_labels, test_fraction, seed)
    arrays = {
        "train_images": raw.train_images[train_index],
        "train_labels": raw.train_labels[train_index],
        "test_images": raw.train_images[test_index],
        "test_labels": raw.train_labels[test_index],
        "train_index": train_index,
        "test_index": test_index,
    }
    return arrays, {"method": "stratified", "held_out_fraction": test_fraction, "seed": seed}


def hold_out_validation(arrays: dict[str, np.ndarray], split: dict[str, Any], fraction: float, seed: int) -> None:
    """Move `fraction` of each class of the training split into val_images/val_labels (in place).

    Seeded apart from the test split (seed + 1) so the two draws are independent."""
    labels = arrays["train_labels"]
    kept, held_out = stratified_split(labels, fraction, seed + 1)
    images = arrays["train_images"]
    arrays.update(
        train_images=images[kept],
        train_labels=labels[kept],
        val_images=images[held_out],
        val_labels=labels[held_out],
        val_index=held_out,  # positions in the training split before the validation images were taken out
    )
    split["validation"] = {"fraction": fraction, "images": len(held_out), "seed": seed + 1}
