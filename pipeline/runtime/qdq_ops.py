"""onnxruntime's QuantizeLinear and DequantizeLinear as PyTorch operators, so that torch.export keeps them whole
and the exporter writes them as themselves (pipeline/runtime/qdq_export.py). torch's own fake_quantize operators
do not pass through torch.export (measured with torch 2.13: UnsupportedOperatorException)."""

from __future__ import annotations

import torch

RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


@torch.library.custom_op("edgeforge::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Per tensor (scalar scale and zero point); the zero point's dtype (uint8 or int8) is the quantized type."""
    qmin, qmax = RANGES[zero_point.dtype]
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero_point.to(torch.int32), qmin, qmax)


@quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("edgeforge::dequantize", mutates_args=())
def dequantize(quantized: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Per channel of axis 0: (q - zero point) * scale, in float32."""
    shape = (-1,) + (1,) * (quantized.dim() - 1)
    return (quantized.float() - zero_point.float().view(shape)) * scale.view(shape)


@dequantize.register_fake
def _(quantized: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.empty(quantized.shape, dtype=torch.float32)
