"""ONNX export with torch.export (the supported exporter), a dynamic batch axis and a full onnx.checker check."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.models.spec import ModelSpec
from pipeline.runtime.sessions import INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 18  # the export stage's default; the searches export their candidates the same way


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, opset: int, translations: dict | None = None) -> None:
    """Export with torch.export (the supported exporter) and a dynamic batch axis; `translations`: onnxscript
    functions for custom operators (pipeline/runtime/qdq_export.py)."""
    model.eval()
    # The exporter logs optional torchvision ops it skips and prints progress; neither concerns us.
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
            custom_translation_table=translations,
        )
        program.save(str(path))
    import onnx  # here: half a second to import, and only exporting needs it

    onnx.checker.check_model(str(path), full_check=True)
