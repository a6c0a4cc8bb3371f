"""Export a fake-quantized model (pipeline/training/qat.py) as the QDQ ONNX onnxruntime runs in int8.

The model's QDQ operators (pipeline/runtime/qdq_ops.py) become QuantizeLinear/DequantizeLinear nodes; its int8
weights and int32 biases become initializers behind DequantizeLinear, as onnxruntime's own quantizer writes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.models.spec import ModelSpec
from pipeline.runtime import qdq_ops  # noqa: F401  (registers the two operators the model calls)
from pipeline.runtime.onnx_export import export_onnx


def translations() -> dict:
    """onnxscript functions for the two operators (onnxscript comes with torch's exporter)."""
    from onnxscript import opset18 as op  # Imported here: onnxscript takes a second to import; only export needs it

    def quantize_dequantize(x, scale, zero_point):
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point), scale, zero_point)

    def dequantize(quantized, scale, zero_point):
        return op.DequantizeLinear(quantized, scale, zero_point, axis=0)

    return {
        torch.ops.edgeforge.quantize_dequantize.default: quantize_dequantize,
        torch.ops.edgeforge.dequantize.default: dequantize,
    }


def export_qdq(model: nn.Module, spec: ModelSpec, path: Path, opset: int) -> None:
    """Export as the model's own export is made (torch.export, a dynamic batch axis, a full onnx.checker check)."""
    export_onnx(model, spec, path, opset, translations())
