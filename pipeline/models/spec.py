"""What a model is built from: the architecture's name, its width and the data's shape."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture."""

    name: str  # a key of MODELS, 'torchvision:NAME', 'timm:NAME', or 'package.module:function' for a user model
    # cnn: channels of the first block; mlp: hidden units; resnet*, mobilenetv2: stem channels; None for library
    # and user models (their own widths)
    width: int | None
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]  # (height, width)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, *self.image_size)
