"""The built-in architectures for small images: a plain CNN, an MLP, the CIFAR ResNets (He et al. 2016) and
MobileNetV2's CIFAR variant (Sandler et al. 2018). Each builder takes a ModelSpec and returns an nn.Module that
ends in a Linear classifier."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from pipeline.models.spec import ModelSpec


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Conv (same padding, no bias: BN follows), BatchNorm, activation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        activation(inplace=True),
    )


def cnn(spec: ModelSpec) -> nn.Module:
    """Three 3x3 conv blocks (width, 2x, 4x channels), one 2x2 max-pool, global average pool, linear head."""
    w = spec.width
    return nn.Sequential(
        conv_block(spec.in_channels, w),
        conv_block(w, 2 * w),
        nn.MaxPool2d(2),
        conv_block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, spec.num_classes),
    )


def mlp(spec: ModelSpec) -> nn.Module:
    """Two hidden layers of `width` units (Hinton et al. 2015 used 2x1200 and 2x800 on MNIST)."""
    inputs = spec.in_channels * spec.image_size[0] * spec.image_size[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, spec.width),
        nn.ReLU(inplace=True),
        nn.Linear(spec.width, spec.width),
        nn.ReLU(inplace=True),
        nn.Linear(spec.width, spec.num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus a shortcut, ReLU after the sum (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # Option B (a 1x1 conv+BN projection) rather than option A's zero padding: a real layer that
        # torch-pruning's dependency graph can prune together with the block it joins.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def cifar_resnet(spec: ModelSpec, blocks_per_stage: int, stem_stride: int = 1) -> nn.Module:
    """CIFAR ResNet-(6n+2) of He et al. 2016 (section 4.2) with projection shortcuts.

    A 3x3 conv stem of `width` channels, then three stages of n BasicBlocks with width, 2*width and
    4*width channels (stride 2 at the first block of stages 2 and 3), global average pool, linear head.
    `width` is the stem's channel count: 16 is the published network, 8 half width, 32 double width.
    `stem_stride` 2 (the `_s2` models) halves the image in the stem, as ImageNet ResNets do: every later layer
    runs on a quarter of the pixels.
    """
    w = spec.width
    layers: list[nn.Module] = [conv_block(spec.in_channels, w, stride=stem_stride)]
    channels = w
    for stage, out_channels in enumerate((w, 2 * w, 4 * w)):
        for block in range(blocks_per_stage):
            layers.append(BasicBlock(channels, out_channels, stride=2 if stage > 0 and block == 0 else 1))
            channels = out_channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, spec.num_classes))


# ResNet-(6n+2): blocks per stage n. Params at width 16, 10 classes: resnet20 0.27M, resnet56 0.86M, resnet110 1.7M.
RESNET_BLOCKS = {"resnet8": 1, "resnet14": 2, "resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18}

# The same ResNets with a stride-2 stem, for latency budgets under the full-resolution network's floor: pruning
# thins channels but cannot shrink the 32x32 maps every layer of the first stage runs on. On a 2-core AMD EPYC
# (Zen 1, AVX2), onnxruntime, one thread, batch 1: resnet8_s2 at width 16 ran 3.4x faster than resnet8
# (0.21 against 0.73 ms, untrained, same run), faster than resnet8 at width 8 (0.27 ms).
STRIDED_STEM = ("resnet8", "resnet14", "resnet20")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor`, at least `divisor` and never more than 10% below `value` (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion by t (none when t=1), 3x3 depthwise, linear 1x1 projection.

    The input is added to the output when stride and channels are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_block(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_block(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            # No activation after the projection: ReLU in the narrow layer destroys information (the paper's 3.2).
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# (expansion t, output channels c, blocks n, stride s of the first block) at the published width. The second
# row has stride 1 instead of ImageNet's 2, and the stem has stride 1: a 32x32 input is downsampled 8x, not 32x.
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenetv2(spec: ModelSpec) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem, 8x total downsampling, ReLU6.

    A 3x3 conv stem, 17 inverted-residual blocks, a 1x1 conv to 1280 channels, global average pool, linear
    head. `width` is the stem's channel count: 32 is the published network, and every layer (the last
    1280 included) is scaled by width/32 and rounded to a multiple of 8 (at least 8). The adaptive pool
    makes any input of 8x8 or more work.
    """
    scale = spec.width / 32
    channels = make_divisible(spec.width)
    layers: list[nn.Module] = [conv_block(spec.in_channels, channels, activation=nn.ReLU6)]
    for expansion, stage_channels, blocks, stride in MOBILENETV2_STAGES:
        out_channels = make_divisible(stage_channels * scale)
        for block in range(blocks):
            layers.append(InvertedResidual(channels, out_channels, stride if block == 0 else 1, expansion))
            channels = out_channels
    last = make_divisible(1280 * scale)
    layers += [conv_block(channels, last, 1, activation=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(last, spec.num_classes))


# name -> builder, and the width of the published network (the default when a config does not set one).
MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "cnn": cnn,
    "mlp": mlp,
    **{name: functools.partial(cifar_resnet, blocks_per_stage=n) for name, n in RESNET_BLOCKS.items()},
    **{
        f"{name}_s2": functools.partial(cifar_resnet, blocks_per_stage=RESNET_BLOCKS[name], stem_stride=2)
        for name in STRIDED_STEM
    },
    "mobilenetv2": mobilenetv2,
}

# The width of each published network: what `width` is when a config does not set one.
PUBLISHED_WIDTHS = {
    "cnn": 32,  # edgeforge's own plain CNN: 32/64/128 channels
    "mlp": 1200,  # Hinton et al. 2015's MNIST teacher: 2 x 1200 hidden units
    **{name: 16 for name in RESNET_BLOCKS},  # He et al. 2016: 16/32/64 channels
    **{f"{name}_s2": 16 for name in STRIDED_STEM},
    "mobilenetv2": 32,  # Sandler et al. 2018: a 32-channel stem
}
