"""quantize: post-training static int8 of the pruned model and the student in onnxruntime (QDQ, train images).

Every argument of quantize_static is passed explicitly and recorded (pipeline/runtime/quantization.py): its
defaults have changed across onnxruntime versions. On x86 without VNNI, u8 x s8 products can saturate a 16-bit
intermediate (../shared/FACTS.md), hence `reduce_range: true` (7-bit weights) by default.

With `quantize.search: true` the settings are not taken from the config but chosen per model on the
validation split (pipeline/search/quantize_variants.py); every variant tried, with its accuracy and latency, is
recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import Artifact
from pipeline.datasets.artifact import Dataset, load_dataset, read_rows
from pipeline.errors import require
from pipeline.runtime import targets
from pipeline.runtime.predict import Normalized
from pipeline.runtime.quantization import METHODS, TYPES, QuantSettings, arguments, check_dynamic_batch, quantize
from pipeline.search import quantize_variants
from pipeline.training.augment import normalize

NAME = "quantize"
SECTION = "quantize"
VERSION = 5
INPUTS = ("data", "export")
TRAINS = False
# int8 ONNX -> the export stage's fp32 ONNX it quantizes. Both: on CPUs with VNNI the int8 student can be the
# fastest model, on CPUs without it int8 of a thin pruned model is often slower than fp32 (FACTS.md).
SOURCES = {"int8.onnx": "pruned.onnx", "student_int8.onnx": "student.onnx"}
OUTPUTS = tuple(SOURCES)


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
    search_threads: int | None = None  # ...and intra-op threads (null: the settings tuned for the first variant)
    search_device: str = "local"  # where variants are timed and scored: local or a device, ssh://... (bench.targets)

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
        require(
            self.search_threads is None or self.search_threads >= 1,
            "quantize.search_threads",
            self.search_threads,
            "null (tuned) or an integer >= 1",
        )
        targets.check(self.search_device)


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """The variant search chooses on latencies measured on quantize.search_device: they are that device's."""
    return {"machine": targets.identity(params.search_device, targets.TIMEOUT_S)} if params.search else {}


def calibration_inputs(dataset: Dataset, params: Params) -> np.ndarray:
    rng = np.random.default_rng(params.seed)
    count = min(params.calibration_samples, len(dataset.train_images))
    chosen = np.sort(rng.choice(len(dataset.train_images), size=count, replace=False))
    return normalize(torch.from_numpy(read_rows(dataset.train_images, chosen)), *dataset.norm).numpy()


def settings(params: Params) -> QuantSettings:
    return QuantSettings(
        method=params.method,
        per_channel=params.per_channel,
        reduce_range=params.reduce_range,
        activation_type=params.activation_type,
        weight_type=params.weight_type,
        calibration_batch=params.calibration_batch,
    )


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    calibration = calibration_inputs(dataset, params)
    validation = None
    if params.search:
        validation = Normalized(dataset.val_images, *dataset.norm), dataset.val_labels  # normalized per batch
    models = {}
    for target, source in SOURCES.items():
        if validation is None:
            quantize(inputs["export"].file(source), out_dir / target, calibration, settings(params))
            chosen, searched = settings(params), None
        else:
            searched = quantize_variants.search(
                inputs["export"].file(source), out_dir / target, calibration, validation, params
            )
            chosen = dataclasses.replace(settings(params), **variant_settings(searched["variants"][searched["chosen"]]))
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
