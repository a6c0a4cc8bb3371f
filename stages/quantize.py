"""quantize: post-training static int8 of the pruned model and the student in onnxruntime (QDQ, train images).

Every argument of quantize_static is passed explicitly and recorded: its defaults have changed
across onnxruntime versions. On x86 without VNNI, u8 x s8 products can saturate a 16-bit
intermediate (../shared/FACTS.md), hence `reduce_range: true` (7-bit weights) by default.

With `quantize.search: true` the settings are not taken from the config but chosen per model on the
validation split (pipeline/quantize_search.py); every variant tried, with its accuracy and latency, is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pipeline import quantize_search
from pipeline.cache import Artifact
from pipeline.errors import ConfigError, StageError, require
from pipeline.onnx_tools import INPUT_NAME, run_batches, session
from pipeline.train import normalize
from stages import data

NAME = "quantize"
SECTION = "quantize"
VERSION = 3
INPUTS = ("data", "export")
TRAINS = False
# int8 ONNX -> the export stage's fp32 ONNX it quantizes. Both: on CPUs with VNNI the int8 student can be the
# fastest model, on CPUs without it int8 of a thin pruned model is often slower than fp32 (FACTS.md).
SOURCES = {"int8.onnx": "pruned.onnx", "student_int8.onnx": "student.onnx"}
OUTPUTS = tuple(SOURCES)
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


@dataclasses.dataclass(frozen=True)
class Params:
    calibration_samples: int = 512  # training images used to calibrate activation ranges (never test images)
    calibration_batch: int = 64
    method: str = "minmax"  # calibration: minmax, entropy or percentile
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = True  # 7-bit weights: avoids u8 x s8 saturation on CPUs without VNNI
    activation_type: str = "uint8"  # uint8 or int8
    weight_type: str = "int8"  # int8 or uint8
    seed: int = 0  # which training images calibrate
    # true: choose method, per_channel, reduce_range and activation_type per model on the validation split
    # (data.validation_fraction), the fastest within search_tolerance of the best accuracy; the above are ignored
    search: bool = False
    search_methods: tuple[str, ...] = ("minmax", "entropy", "percentile")  # calibration methods tried
    search_tolerance: float = 0.005  # validation accuracy a variant may lose against the best one
    search_batch: int = 1  # batch size of the variants' latency (p50)...
    search_threads: int = 2  # ...and intra-op threads (bench.threads[0] compares models)

    def __post_init__(self):
        require(
            self.calibration_samples >= 1, "quantize.calibration_samples", self.calibration_samples, "an integer >= 1"
        )
        require(self.calibration_batch >= 1, "quantize.calibration_batch", self.calibration_batch, "an integer >= 1")
        require(self.method in METHODS, "quantize.method", self.method, " or ".join(METHODS))
        require(self.activation_type in TYPES, "quantize.activation_type", self.activation_type, " or ".join(TYPES))
        require(self.weight_type in TYPES, "quantize.weight_type", self.weight_type, " or ".join(TYPES))
        require(
            set(self.search_methods) <= set(METHODS),
            "quantize.search_methods",
            list(self.search_methods),
            f"a list from {', '.join(METHODS)}",
        )
        require(0 <= self.search_tolerance <= 1, "quantize.search_tolerance", self.search_tolerance, "in [0, 1]")
        require(self.search_batch >= 1, "quantize.search_batch", self.search_batch, "an integer >= 1")
        require(self.search_threads >= 1, "quantize.search_threads", self.search_threads, "an integer >= 1")


class ImageReader(CalibrationDataReader):
    """Feeds calibration batches of preprocessed training images to onnxruntime."""

    def __init__(self, inputs: np.ndarray, batch: int):
        self._batches = iter([inputs[i : i + batch] for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_inputs(dataset: data.Dataset, params: Params) -> np.ndarray:
    rng = np.random.default_rng(params.seed)
    count = min(params.calibration_samples, len(dataset.train_images))
    chosen = np.sort(rng.choice(len(dataset.train_images), size=count, replace=False))
    return normalize(torch.from_numpy(dataset.train_images[chosen]), *dataset.norm).numpy()


def quantize(source: Path, target: Path, calibration: np.ndarray, params: Params) -> None:
    """quant_pre_process, then quantize_static with every argument explicit (see `arguments`)."""
    prepared = target.with_name(f"{target.stem}.prepared.onnx")
    quant_pre_process(
        str(source), str(prepared), skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=False
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the Entropy/Percentile calibrators print progress
        quantize_static(
            str(prepared),
            str(target),
            ImageReader(calibration, params.calibration_batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=None,
            per_channel=params.per_channel,
            reduce_range=params.reduce_range,
            activation_type=TYPES[params.activation_type],
            weight_type=TYPES[params.weight_type],
            nodes_to_quantize=None,
            nodes_to_exclude=None,
            use_external_data_format=False,
            calibrate_method=METHODS[params.method],
            calibration_providers=["CPUExecutionProvider"],
            extra_options={},
        )
    prepared.unlink()


def arguments(params: Params) -> dict[str, Any]:
    """The quantize_static arguments, as recorded in the manifest and the report."""
    return {
        "quant_format": "QDQ",
        "per_channel": params.per_channel,
        "reduce_range": params.reduce_range,
        "activation_type": params.activation_type,
        "weight_type": params.weight_type,
        "calibrate_method": params.method,
        "op_types_to_quantize": None,
        "nodes_to_exclude": None,
        "extra_options": {},
    }


def check_dynamic_batch(path: Path, calibration: np.ndarray, num_classes: int) -> None:
    """Dynamic batch has broken after quantization in some onnxruntime versions: check batch 1 and N."""
    sess = session(path)
    for batch in (1, min(len(calibration), 7)):
        logits = run_batches(sess, calibration[:batch], batch=batch)
        if logits.shape != (batch, num_classes) or not np.all(np.isfinite(logits)):
            raise StageError(f"quantize: {path.name} gave logits of shape {logits.shape} at batch {batch}")


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = data.load(inputs["data"])
    calibration = calibration_inputs(dataset, params)
    validation = None
    if params.search:
        if len(dataset.val_labels) == 0:
            raise ConfigError("quantize.search=true needs a validation split: set data.validation_fraction (e.g. 0.1)")
        validation = normalize(torch.from_numpy(dataset.val_images), *dataset.norm).numpy(), dataset.val_labels
    models = {}
    for target, source in SOURCES.items():
        if validation is None:
            quantize(inputs["export"].file(source), out_dir / target, calibration, params)
            chosen, searched = params, None
        else:
            searched = quantize_search.search(
                inputs["export"].file(source), out_dir / target, calibration, validation, params
            )
            chosen = dataclasses.replace(params, **variant_settings(searched["variants"][searched["chosen"]]))
        check_dynamic_batch(out_dir / target, calibration, len(dataset.class_names))
        models[target.removesuffix(".onnx")] = {
            "source": source,
            "size_bytes": (out_dir / target).stat().st_size,
            "arguments": arguments(chosen),
            "search": searched,
        }
    how = "searched on the validation split" if params.search else params.method
    return {
        "models": models,
        "calibration_images": len(calibration),
        "arguments": models["int8"]["arguments"],  # of the pruned model's int8; per model in models
        "summary": f"{', '.join(SOURCES.values())} -> {', '.join(SOURCES)} "
        f"(QDQ, {how}, {len(calibration)} training images)" + search_summary(models),
    }


def variant_settings(variant: dict[str, Any]) -> dict[str, Any]:
    return {key: variant[key] for key in ("method", "per_channel", "activation_type", "reduce_range")}


def search_summary(models: dict[str, dict]) -> str:
    parts = []
    for name, model in models.items():
        if model["search"]:
            best = model["search"]["variants"][model["search"]["chosen"]]
            parts.append(
                f"{name}: {best['method']}, {'per-channel' if best['per_channel'] else 'per-tensor'}, "
                f"{best['activation_type']} activations, reduce_range {best['reduce_range']} "
                f"(validation {best['validation_accuracy']:.4f}, {best['p50_ms']:.4f} ms, "
                f"of {len(model['search']['variants'])} variants)"
            )
    return "; " + "; ".join(parts) if parts else ""
