"""What every dataset reader returns, where the sources live, and the checks they share.

Readers (imagefolder.py, binary.py) turn on-disk datasets into uint8 arrays; downloads.py fetches the public
ones. Every problem with the user's data is a ConfigError: one line naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

ON_DISK = ("imagefolder", "cifar10", "mnist", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class RawDataset:
    train_images: np.ndarray  # uint8, shape (N, C, H, W), C is 1 or 3
    train_labels: np.ndarray  # int64, shape (N,)
    test_images: np.ndarray | None  # None when the source has no test split
    test_labels: np.ndarray | None
    class_names: list[str]


def require_root(root: Path, name: str, fetchable: bool) -> Path:
    if not root.is_dir():
        fix = " (or set data.download: true to fetch it there)" if fetchable else ""
        raise ConfigError(
            f"{name}: data.root {root} is not an existing folder; set data.root to the dataset's folder{fix}"
        )
    return root


def check_labels(labels: np.ndarray, path: Path, name: str) -> None:
    bad = np.flatnonzero(labels >= 10)
    if bad.size:
        raise ConfigError(
            f"{name}: {path} record {bad[0]} has label {labels[bad[0]]}, but labels are 0..9; "
            "the file is corrupt: delete it and download it again"
        )
