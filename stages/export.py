"""export: ONNX for the teacher, the student and the pruned student, each verified before publishing.

Verification: onnx.checker (full check), then onnxruntime against PyTorch on real test images at
batch 1 and batch N; the largest difference and the tolerance go into the manifest.

A teacher that is an ONNX file (`teacher.onnx`) is not exported: the teacher stage's file (the user's model wrapped
behind its preprocessing, checked there) is copied. There is no PyTorch model to compare it with, and its record
says so.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import Artifact
from pipeline.datasets.artifact import load_dataset, read_rows
from pipeline.errors import StageError, require
from pipeline.models.storage import load_model
from pipeline.runtime.onnx_export import DEFAULT_OPSET, export_onnx
from pipeline.runtime.sessions import run_batches, session
from pipeline.training import onnx_teacher
from pipeline.training.augment import normalize

NAME = "export"
SECTION = "export"
VERSION = 2  # 2: in-place activations exported out of place (same operators, other node names)
INPUTS = ("data", "teacher", "distill", "prune")
TRAINS = False
OUTPUTS = ("teacher.onnx", "student.onnx", "pruned.onnx")
SOURCES = {"teacher": "teacher", "student": "distill", "pruned": "prune"}  # ONNX name -> stage


@dataclasses.dataclass(frozen=True)
class Params:
    opset: int = DEFAULT_OPSET  # ONNX opset of the exported graphs
    compare_batch: int = 64  # batch N of the onnxruntime-vs-PyTorch check (batch 1 is always checked)
    atol: float = 1e-4  # allowed |onnxruntime - PyTorch| on logits, plus rtol * |PyTorch|
    rtol: float = 1e-3

    def __post_init__(self):
        require(17 <= self.opset <= 21, "export.opset", self.opset, "an ONNX opset from 17 to 21")
        require(self.compare_batch >= 2, "export.compare_batch", self.compare_batch, "an integer >= 2")
        require(self.atol >= 0, "export.atol", self.atol, "a number >= 0")
        require(self.rtol >= 0, "export.rtol", self.rtol, "a number >= 0")


def compare_with_torch(
    model: torch.nn.Module, onnx_path: Path, inputs: torch.Tensor, params: Params, name: str
) -> dict[str, float]:
    """Max |difference| of logits at batch 1 and batch N; raises StageError beyond tolerance."""
    sess = session(onnx_path)
    result = {}
    for batch in (1, params.compare_batch):
        x = inputs[:batch]
        with torch.no_grad():
            expected = model(x).numpy()
        actual = run_batches(sess, x.numpy(), batch=batch)
        difference = float(np.max(np.abs(actual - expected)))
        if not np.allclose(actual, expected, atol=params.atol, rtol=params.rtol):
            raise StageError(
                f"export: {name}.onnx differs from PyTorch by {difference:.3g} at batch {batch} "
                f"(atol {params.atol}, rtol {params.rtol})"
            )
        result[f"max_abs_diff_batch_{batch}"] = difference
    return result


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    test_inputs = normalize(
        torch.from_numpy(read_rows(dataset.test_images, slice(0, params.compare_batch))), *dataset.norm
    )
    models = {}
    for name, stage in SOURCES.items():
        if onnx_teacher.is_onnx_teacher(inputs[stage].path):
            models[name] = copy_onnx_teacher(inputs[stage], out_dir / f"{name}.onnx")
            continue
        model, spec = load_model(inputs[stage].path)
        path = out_dir / f"{name}.onnx"
        export_onnx(model, spec, path, params.opset)
        models[name] = {
            "macs": inputs[stage].metrics["macs"],  # counted by the stage that made the model
            "params": inputs[stage].metrics["params"],
            "size_bytes": path.stat().st_size,
            "input_shape": ["batch", spec.in_channels, *spec.image_size],
            **compare_with_torch(model, path, test_inputs, params, name),
        }
    worst = max(v for m in models.values() for k, v in m.items() if k.startswith("max_abs_diff"))
    copied = [name for name, m in models.items() if "copied_from" in m]
    exported = [name for name in models if name not in copied]
    return {
        "models": models,
        "tolerance": {"atol": params.atol, "rtol": params.rtol},
        "summary": f"{', '.join(exported)} exported (opset {params.opset}); max |onnxruntime - PyTorch| {worst:.2g}"
        + "".join(f"; {name} copied from teacher.onnx (no PyTorch model to compare with)" for name in copied),
    }


def copy_onnx_teacher(teacher: Artifact, path: Path) -> dict[str, Any]:
    """The teacher stage's ONNX file as it is, with the counts that stage made of it."""
    shutil.copyfile(teacher.file(onnx_teacher.FILE), path)
    return {
        "macs": teacher.metrics["macs"],
        "params": teacher.metrics["params"],
        "size_bytes": path.stat().st_size,
        "input_shape": ["batch", *teacher.metrics["onnx"]["input_shape"]],
        "copied_from": teacher.metrics["onnx"]["file"],
        "compared": "skipped: the teacher is an ONNX file (teacher.onnx), there is no PyTorch model to compare with",
    }
