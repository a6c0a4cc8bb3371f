"""ONNX export with torch.export (the supported exporter), a dynamic batch axis and a full onnx.checker check."""

from __future__ import annotations

import contextlib
import functools
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
    _build_torchlib_list_once()
    # The exporter logs optional torchvision ops it skips and prints progress; neither concerns us.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with _out_of_place(model), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
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


def _build_torchlib_list_once() -> None:
    """torch.onnx builds its operator registry afresh on every export, and onnxscript's part of it re-parses the
    source of each of its ~500 ATen functions to read their domain: 0.85 s of a 2.4 s export of the digits CNN
    (AMD EPYC Zen 1, torch 2.13.0, onnxscript 0.7.2), paid again by every candidate a search exports. The list
    never changes within a process, so it is built once. Only the list is shared: each export still builds its own
    registry from it (custom translations are registered into that registry, not the list). Where another torch
    lays its exporter out differently, exports build it every time, as they did."""
    from torch.onnx._internal.exporter import _registration  # here: its import is the exporter's, on first use

    apis = getattr(_registration, "onnxscript_apis", None)
    build = getattr(apis, "get_torchlib_ops", None)
    if build is not None and not hasattr(build, "cache_info"):
        apis.get_torchlib_ops = functools.cache(build)


@contextlib.contextmanager
def _out_of_place(model: nn.Module):
    """Activations built with `inplace=True` (ReLU, ReLU6, Hardswish, ... in our MobileNetV2 and in torchvision's
    models) run out of place while exporting: torch.export turns every in-place op into a functional one through a
    slow decomposition, which took 6 of the 16 s of exporting the suite's MobileNetV2 (AMD EPYC Zen 1). The graph
    is the same either way (the same operators; only generated node names differ); the model is restored after."""
    switched = [module for module in model.modules() if getattr(module, "inplace", None) is True]
    for module in switched:
        module.inplace = False
    try:
        yield
    finally:
        for module in switched:
            module.inplace = True
