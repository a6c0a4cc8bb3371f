"""ONNX teachers as another framework would hand them over: a PyTorch teacher exported behind other input
conventions (layout, scale, mean and std baked into the graph), for the tests of `teacher.onnx`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn


class ForeignConvention(nn.Module):
    """`teacher` behind another input convention: it takes `(pixel * scale - mean) / std` in `layout` and turns
    that back into the pipeline's `(pixel / 255 - data_mean) / data_std`, NCHW, before the teacher sees it."""

    def __init__(self, teacher: nn.Module, layout: str, scale: float, mean, std, data_norm) -> None:
        super().__init__()
        self.teacher, self.layout, self.scale = teacher.eval(), layout, scale
        for name, values in (("mean", mean), ("std", std), ("data_mean", data_norm[0]), ("data_std", data_norm[1])):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, foreign: torch.Tensor) -> torch.Tensor:
        nchw = foreign.permute(0, 3, 1, 2) if self.layout == "nhwc" else foreign
        pixels = (nchw * self.std + self.mean) / self.scale
        return self.teacher((pixels / 255 - self.data_mean) / self.data_std)


def export_foreign(
    teacher: nn.Module, path: Path, image_shape, layout="nchw", scale=1 / 255, mean=None, std=None, data_norm=None
) -> Path:
    """Export `teacher` to `path` taking its input in the given convention (mean/std None: data_norm's, in units of
    pixel * scale). A dynamic batch axis, as tf2onnx and torch.onnx give."""
    data_norm = data_norm or ([0.0] * image_shape[0], [1.0] * image_shape[0])
    mean = mean if mean is not None else [m * 255 * scale for m in data_norm[0]]
    std = std if std is not None else [s * 255 * scale for s in data_norm[1]]
    model = ForeignConvention(teacher, layout, scale, mean, std, data_norm).eval()
    channels, height, width = image_shape
    example = torch.rand(2, channels, height, width) if layout == "nchw" else torch.rand(2, height, width, channels)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["images"],
            output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("n")},),
            opset_version=18,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path))
    return path
