"""Quantization-aware fine-tune of one model: fake quantization (pipeline/training/qat.py) started from the
calibration images' ranges, a distillation fine-tune from the teacher, then the QDQ ONNX export, checked against
the PyTorch model it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.datasets.artifact import Dataset
from pipeline.errors import StageError
from pipeline.models.spec import ModelSpec
from pipeline.runtime.qdq_export import export_qdq
from pipeline.runtime.sessions import run_batches, session
from pipeline.training import qat
from pipeline.training.augment import normalize
from pipeline.training.loop import Recipe, fit

# onnxruntime against the frozen PyTorch model, on validation images: the largest logit difference as a share of
# the logits' spread, and the share of images whose top class differs. The arithmetic is the same; only rounding
# ties decided differently (x * 1/scale in torch, x / scale in onnxruntime) can move an activation by one step.
MAX_LOGIT_DIFFERENCE = 0.02
MAX_TOP1_DISAGREEMENT = 0.01
CHECK_IMAGES = 256


def quantization_aware(
    model: nn.Module,
    spec: ModelSpec,
    teacher: nn.Module,
    dataset: Dataset,
    recipe: Recipe,
    calibration: np.ndarray,
    settings: dict[str, Any],
    target: Path,
) -> dict[str, Any]:
    """Fine-tune a fake-quantized copy of `model` and write its QDQ ONNX to `target`; what happened, as recorded."""
    fake = qat.fake_quantized(model, spec.example_input(2), settings["activation_type"], settings["reduce_range"])
    batch = settings["calibration_batch"]
    qat.calibrate(fake, (torch.from_numpy(calibration[i : i + batch]) for i in range(0, len(calibration), batch)))
    validation = dataset.val_images, dataset.val_labels
    history = fit(fake, dataset.train_images, dataset.train_labels, dataset.norm, recipe, teacher, "quantize qat",
                  None, None, validation)  # fmt: skip
    qat.freeze(fake)
    export_qdq(fake, spec, target, settings["opset"])
    return {"history": history, "agreement": check_against_torch(fake, target, dataset)}


def check_against_torch(model: nn.Module, path: Path, dataset: Dataset) -> dict[str, float]:
    """onnxruntime's logits of the exported file against the frozen PyTorch model's on validation images; a
    StageError beyond the stated tolerance (the file would not be the model that was trained)."""
    images = torch.from_numpy(np.array(dataset.val_images[:CHECK_IMAGES]))
    inputs = normalize(images, *dataset.norm)
    with torch.no_grad():
        expected = model(inputs).numpy()
    actual = run_batches(session(path), inputs.numpy())
    spread = float(expected.max() - expected.min()) or 1.0
    difference = float(np.abs(actual - expected).max()) / spread
    disagreement = float((actual.argmax(1) != expected.argmax(1)).mean())
    if difference > MAX_LOGIT_DIFFERENCE or disagreement > MAX_TOP1_DISAGREEMENT:
        raise StageError(
            f"quantize: the quantization-aware model in onnxruntime differs from PyTorch (logits by {difference:.3g} "
            f"of their spread, top-1 on {disagreement:.1%} of {len(inputs)} images); set quantize.qat: never"
        )
    return {"images": len(inputs), "max_logit_difference": difference, "top1_disagreement": disagreement}
