"""Preprocessing and augmentation on uint8 batches: what every model (and every ONNX export) is fed.

Images stay uint8 in memory; each batch is augmented (random shift, optional flip) and normalized on the fly,
on whatever device trains.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F


def normalize(
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 NCHW pixels to the float input every model (and every ONNX export) expects.

    (pixel / 255 - mean) / std, computed as pixel * scale + shift in one pass, written straight
    into the requested memory layout.
    """
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
    return torch.addcmul(shift, images, scale, out=out)


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """normalize()'s scale and shift, made once per device: a CUDA tensor built from host values every batch
    would make the CPU wait for the GPU each time."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The random draws of one batch: a shift per image and which images are flipped."""

    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flipped: torch.Tensor | None

    @staticmethod
    def draw(n: int, shift: int, flip: bool, generator: torch.Generator) -> Augmentation:
        """Drawn on the CPU from the seeded generator: the same draws on every device and every rank."""
        dy = dx = flipped = None
        if shift > 0:
            dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        if flip:
            flipped = torch.rand(n, generator=generator) < 0.5
        return Augmentation(dy, dx, flipped)

    def select(self, rows: slice) -> Augmentation:
        """The draws of the images at `rows` of the batch (one rank's share)."""
        return Augmentation(*(None if draw is None else draw[rows] for draw in (self.dy, self.dx, self.flipped)))


def augment(images: torch.Tensor, shift: int, draws: Augmentation) -> torch.Tensor:
    """The drawn translation by up to `shift` pixels per image (zero padding) and horizontal flips."""
    n, _, h, w = images.shape
    device = images.device
    if draws.dy is not None:
        padded = F.pad(images, (shift, shift, shift, shift)).permute(0, 2, 3, 1)
        rows = (draws.dy.to(device)[:, None] + torch.arange(h, device=device))[:, :, None]
        cols = (draws.dx.to(device)[:, None] + torch.arange(w, device=device))[:, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if draws.flipped is not None:
        images = torch.where(draws.flipped.to(device).view(-1, 1, 1, 1), images.flip(3), images)
    return images
