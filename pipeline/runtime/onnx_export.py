"""ONNX export with torch.export (the supported exporter), a dynamic batch axis and a full onnx.checker check."""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import hashlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.models.spec import ModelSpec
from pipeline.runtime.sessions import INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 18  # the export stage's default; the searches export their candidates the same way
KEPT_EXPORTS = 8  # files this process keeps to copy when it exports the same model again (the oldest go first)


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path, opset: int, translations: dict | None = None) -> None:
    """Export with torch.export (the supported exporter) and a dynamic batch axis; `translations`: onnxscript
    functions for custom operators (pipeline/runtime/qdq_export.py). A model this process exported before (same
    modules, weights, spec and opset) is copied from that export's file: the exporter is deterministic (the export
    stage's tests check the bytes) and takes about a second even for the digits CNN, and a run exports the same
    model more than once (the prune search times the student and the fine-tuned model, then the export stage
    exports both)."""
    model.eval()
    key = None if translations else export_key(model, spec, opset)
    if key is not None and key in _EXPORTS.files:
        shutil.copyfile(_EXPORTS.files[key], path)
        return
    export_fresh(model, spec, path, opset, translations)
    if key is not None and not path.with_name(path.name + ".data").exists():  # one file, no external data
        with contextlib.suppress(OSError):  # a copy kept is a saving, never a reason for the export to fail
            _EXPORTS.keep(key, path)


def export_key(model: nn.Module, spec: ModelSpec, opset: int) -> str | None:
    """What decides an export's bytes: the modules with their arguments (repr), every tensor of the state dict,
    the spec and the opset. None (export afresh) for a model with hooks, which may change its graph unseen."""
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return None
    digest = hashlib.sha256(f"{model!r}|{spec}|{opset}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _KeptExports:
    """Copies of this process's last KEPT_EXPORTS exports, in a folder removed when the process exits."""

    def __init__(self) -> None:
        self.files: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self.folder: Path | None = None

    def keep(self, key: str, path: Path) -> None:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="edgeforge-exports-"))
            atexit.register(shutil.rmtree, self.folder, True)
        kept = self.folder / f"{key}.onnx"
        try:
            shutil.copyfile(path, kept)
        except OSError:
            kept.unlink(missing_ok=True)
            raise
        self.files[key] = kept  # only a whole copy is ever handed out
        while len(self.files) > KEPT_EXPORTS:
            self.files.pop(next(iter(self.files))).unlink(missing_ok=True)


_EXPORTS = _KeptExports()


def export_fresh(model: nn.Module, spec: ModelSpec, path: Path, opset: int, translations: dict | None = None) -> None:
    """export_onnx without looking at earlier exports."""
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
