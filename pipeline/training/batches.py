"""Batches of uint8 images for training and evaluation, from in-memory or memory-mapped arrays alike."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.artifact import read_rows

Images = np.ndarray | torch.Tensor  # uint8 (N, C, H, W): a data artifact's memory-mapped split, or in memory


def pixel_rows(images: Images, index: torch.Tensor | slice) -> torch.Tensor:
    """Rows `index` of `images` as a uint8 tensor: only those rows are read from a memory-mapped file."""
    if isinstance(images, torch.Tensor):
        return images[index]
    if isinstance(index, torch.Tensor):
        index = index.numpy()
    return torch.from_numpy(read_rows(images, index))
