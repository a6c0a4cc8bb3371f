"""Preprocessing and augmentation on uint8 batches: what every model (and every ONNX export) is fed.

Images stay uint8 in memory; each batch is augmented and normalized on the fly, on whatever device trains. Two
augmentations (a recipe's `augment`): `shift`, a random translation by up to `shift` pixels with zero padding, for
small images; and `resized_crop`, torchvision's RandomResizedCrop (a crop of 8-100% of the image's area and
aspect ratio 3/4-4/3, resized back to the image's size) for full-size images, whose stored images are already
resized and center-cropped as evaluation sees them (stages/data.py). Either may add random horizontal flips.
"""

from __future__ import annotations

import dataclasses
import functools
import math

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


AUGMENTATIONS = ("shift", "resized_crop")
CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults: share of the image's area
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # and aspect ratio (width / height) of the crop
CROP_ATTEMPTS = 10  # crops drawn per image; the first that fits is taken, as torchvision does


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The random draws of one batch: a shift per image or a crop box per image, and which images are flipped."""

    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flipped: torch.Tensor | None
    boxes: torch.Tensor | None = None  # (n, 4) float: top, left, height, width of each crop in pixels

    @staticmethod
    def draw(
        n: int, shift: int, flip: bool, generator: torch.Generator, crop_of: tuple[int, int] | None = None
    ) -> Augmentation:
        """Drawn on the CPU from the seeded generator: the same draws on every device and every rank. With
        `crop_of` (the images' height and width) a crop box per image replaces the shift."""
        dy = dx = flipped = boxes = None
        if crop_of is not None:
            boxes = _crop_boxes(n, *crop_of, generator)
        elif shift > 0:
            dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        if flip:
            flipped = torch.rand(n, generator=generator) < 0.5
        return Augmentation(dy, dx, flipped, boxes)

    def select(self, rows: slice) -> Augmentation:
        """The draws of the images at `rows` of the batch (one rank's share)."""
        draws = (self.dy, self.dx, self.flipped, self.boxes)
        return Augmentation(*(None if draw is None else draw[rows] for draw in draws))


def _crop_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n images at once: CROP_ATTEMPTS (area, ratio) draws per image,
    the first whose box fits is kept; an image where none fits gets the central crop of the clamped ratio. Always the
    same number of draws per batch, so the generator's stream does not depend on which attempts fitted."""
    area = height * width
    scale = torch.empty(n, CROP_ATTEMPTS).uniform_(*CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n, CROP_ATTEMPTS).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator
    )
    place = torch.rand(n, 2, generator=generator)
    ratio = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * scale * ratio))
    h = torch.round(torch.sqrt(area * scale / ratio))
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = torch.where(fits.any(1), fits.int().argmax(1), -1)
    fallback_w, fallback_h = _central_crop(height, width)
    rows = torch.arange(n)
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], float(fallback_h))
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], float(fallback_w))
    central = first < 0
    top = torch.where(central, torch.floor((height - h) / 2), torch.floor(place[:, 0] * (height - h + 1)))
    left = torch.where(central, torch.floor((width - w) / 2), torch.floor(place[:, 1] * (width - w + 1)))
    return torch.stack([top, left, h, w], dim=1)


def _central_crop(height: int, width: int) -> tuple[int, int]:
    """torchvision's fallback crop: the whole image, its aspect ratio clamped into CROP_RATIO."""
    if width / height < CROP_RATIO[0]:
        return width, int(round(width / CROP_RATIO[0]))
    if width / height > CROP_RATIO[1]:
        return int(round(height * CROP_RATIO[1])), height
    return width, height


def augment(images: torch.Tensor, shift: int, draws: Augmentation) -> torch.Tensor:
    """The drawn translation by up to `shift` pixels per image (zero padding) or crop, and horizontal flips."""
    if draws.boxes is not None:
        return resized_crop(images, draws.boxes, draws.flipped)
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


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flipped: torch.Tensor | None) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized (bilinear) to the images' own size, mirrored where
    `flipped`: one grid_sample over the batch. Float pixels 0..255 out (normalize takes them as uint8 ones)."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    top, left, h, w = boxes.unbind(1)
    # The affine map from output coordinates to input coordinates, both in grid_sample's [-1, 1] with
    # align_corners=False: output pixel centres land on the crop's evenly spaced sample points.
    x_scale = w / width
    if flipped is not None:
        x_scale = torch.where(flipped.to(images.device), -x_scale, x_scale)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = x_scale
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
