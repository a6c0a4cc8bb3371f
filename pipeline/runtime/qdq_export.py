"""Export a fake-quantized model (pipeline/training/qat.py) as the QDQ ONNX onnxruntime runs in int8.

The model's QDQ operators (pipeline/runtime/qdq_ops.py) become QuantizeLinear/DequantizeLinear nodes; its int8
weights and int32 biases become initializers behind DequantizeLinear, as onnxruntime's own quantizer writes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.models.spec import ModelSpec
from pipeline.runtime import qdq_ops  # noqa: F401  (registers the two operators the model calls)
from pipeline.runtime.sessions import INPUT_NAME, OUTPUT_NAME


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
    """Export with torch.export and a dynamic batch axis, then check the file (onnx.checker, full)."""
    model.eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (spec.example_input(2),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
            custom_translation_table=translations(),
        )
        program.save(str(path))
    import onnx  # here: half a second to import, and only exporting needs it

    onnx.checker.check_model(str(path), full_check=True)
