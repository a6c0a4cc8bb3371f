"""quantize: post-training static int8 of the pruned model and the student in onnxruntime (QDQ, train images).

Every argument of quantize_static is passed explicitly and recorded (pipeline/runtime/quantization.py): its
defaults have changed across onnxruntime versions. On x86 without VNNI, u8 x s8 products can saturate a 16-bit
intermediate (../shared/FACTS.md), hence `reduce_range: true` (7-bit weights) by default.

With `quantize.search: true` the settings are not taken from the config but chosen per model on the
validation split (pipeline/search/quantize_variants.py); every variant tried, with its accuracy and latency, is
recorded.

When post-training int8 loses more than `quantize.max_drop` of validation accuracy against its fp32 source
(`quantize.qat: auto`; `always` or `never`), the PyTorch model is fine-tuned with fake quantization that does
onnxruntime's QDQ arithmetic (pipeline/training/qat.py), with the teacher's distillation loss and the prune stage's
fine-tune recipe at `quantize.qat_lr` (cosine; prune.lr / 100 by default), and exported as QDQ ONNX; of the two
int8 files the one more accurate on the validation split is kept (post-training on a tie), and both are recorded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime
import torch

from pipeline.cache import Artifact
from pipeline.datasets.artifact import Dataset, load_dataset, read_rows
from pipeline.errors import require
from pipeline.models.storage import load_model
from pipeline.runtime import targets
from pipeline.runtime.predict import Normalized
from pipeline.runtime.quantization import METHODS, TYPES, QuantSettings, arguments, check_dynamic_batch, quantize
from pipeline.search import quantize_variants
from pipeline.training.augment import normalize
from pipeline.training.onnx_teacher import load_teacher
from pipeline.training.qat import ACTIVATION_RANGES, MOMENTUM
from pipeline.training.qat_finetune import quantization_aware
from pipeline.training.recipes import recipe_for

NAME = "quantize"
SECTION = "quantize"
VERSION = 6
INPUTS = ("data", "teacher", "distill", "prune", "export")
TRAINS = False  # the leader alone runs it, the quantization-aware fine-tune included
# int8 ONNX -> the export stage's fp32 ONNX it quantizes. Both: on CPUs with VNNI the int8 student can be the
# fastest model, on CPUs without it int8 of a thin pruned model is often slower than fp32 (FACTS.md).
SOURCES = {"int8.onnx": "pruned.onnx", "student_int8.onnx": "student.onnx"}
OUTPUTS = tuple(SOURCES)
TORCH_SOURCES = {"int8.onnx": "prune", "student_int8.onnx": "distill"}  # the stage holding each PyTorch model
QAT_MODES = ("auto", "always", "never")  # not "off": YAML reads off as false


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
    # ...and intra-op threads (null: bench.threads when that is one count, else the first variant's tuned settings)
    search_threads: int | None = None
    search_device: str = "local"  # where variants are timed and scored: local or a device, ssh://... (bench.targets)
    # Quantization-aware fine-tune: auto (when post-training int8 loses more than max_drop of validation accuracy
    # against its fp32 source), always, or never
    qat: str = "auto"
    max_drop: float = 0.005
    qat_epochs: int = 2
    # Peak learning rate (cosine); null: prune.lr / 100. BatchNorm is folded, so nothing normalizes the gradients:
    # on digits QAT at lr 0.01 took the student from 0.993 to 0.336, at 0.001 to 0.986, at 0.0001 kept 0.993.
    qat_lr: float | None = None

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
        require(self.qat in QAT_MODES, "quantize.qat", self.qat, " or ".join(QAT_MODES))
        require(0 <= self.max_drop <= 1, "quantize.max_drop", self.max_drop, "a fraction in [0, 1]")
        require(self.qat_epochs >= 1, "quantize.qat_epochs", self.qat_epochs, "an integer >= 1")
        require(self.qat_lr is None or self.qat_lr > 0, "quantize.qat_lr", self.qat_lr, "null or a number > 0")


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
    if params.search or params.qat != "never":
        validation = Normalized(dataset.val_images, *dataset.norm), dataset.val_labels  # normalized per batch
    models = {}
    for target, source in SOURCES.items():
        if not params.search:
            quantize(inputs["export"].file(source), out_dir / target, calibration, settings(params))
            chosen, searched = settings(params), None
        else:
            searched = quantize_variants.search(
                inputs["export"].file(source), out_dir / target, calibration, validation, params
            )
            chosen = dataclasses.replace(settings(params), **variant_settings(searched["variants"][searched["chosen"]]))
        record = {"arguments": arguments(chosen), "search": searched, "qat": None}
        if params.qat != "never":
            record = aware_or_not(target, chosen, record, inputs, dataset, calibration, validation, params, out_dir)
        check_dynamic_batch(out_dir / target, calibration, len(dataset.class_names))
        models[target.removesuffix(".onnx")] = {"source": source, "size_bytes": (out_dir / target).stat().st_size,
                                                **record}  # fmt: skip
    how = "searched on the validation split" if params.search else params.method
    return {
        "models": models,
        "calibration_images": len(calibration),
        "arguments": models["int8"]["arguments"],  # of the pruned model's int8; per model in models
        "summary": f"{', '.join(SOURCES.values())} -> {', '.join(SOURCES)} "
        f"(QDQ, {how}, {len(calibration)} training images)" + search_summary(models) + qat_summary(models),
    }


def aware_or_not(
    target: str,
    chosen: QuantSettings,
    record: dict[str, Any],
    inputs: dict[str, Artifact],
    dataset: Dataset,
    calibration: np.ndarray,
    validation: tuple,
    params: Params,
    out_dir: Path,
) -> dict[str, Any]:
    """Run the quantization-aware fine-tune when post-training int8 lost too much (or always); keep the int8 file
    more accurate on validation. The model's record, with what QAT did and why. Both accuracies come from the
    variant search where it ran (it scored the fp32 source and the file it chose), else are computed here."""
    searched = record["search"]
    if searched is None:
        fp32 = quantize_variants.validation_accuracy(inputs["export"].file(SOURCES[target]), *validation)
        post_training = quantize_variants.validation_accuracy(out_dir / target, *validation)
    else:
        fp32 = searched["fp32_validation_accuracy"]
        post_training = searched["variants"][searched["chosen"]]["validation_accuracy"]
    drop = fp32 - post_training
    qat = {"mode": params.qat, "max_drop": params.max_drop, "fp32_validation_accuracy": fp32,
           "ptq_validation_accuracy": post_training, "ptq_drop": drop}  # fmt: skip
    if params.qat == "auto" and drop <= params.max_drop:
        return {**record, "qat": {**qat, "ran": False, "kept": "post-training"}}
    model, spec = load_model(inputs[TORCH_SOURCES[target]].path)
    prune_params = inputs["prune"].manifest["params"]
    lr = params.qat_lr or prune_params["lr"] / 100
    fine_tune = SimpleNamespace(**{**prune_params, "lr": lr, "schedule": "cosine"})
    recipe = recipe_for(fine_tune, params.qat_epochs, prune_params["temperature"], prune_params["alpha"])
    settings = {**arguments(chosen), "calibration_batch": params.calibration_batch}
    settings["opset"] = inputs["export"].manifest["params"]["opset"]
    aware_path = out_dir / f"{Path(target).stem}.qat.onnx"
    teacher = load_teacher(inputs["teacher"].path)
    trained = quantization_aware(model, spec, teacher, dataset, recipe, calibration, settings, aware_path)
    aware = quantize_variants.validation_accuracy(aware_path, *validation)
    kept = "quantization-aware" if aware > post_training else "post-training"
    if kept == "quantization-aware":
        aware_path.replace(out_dir / target)
        record = {**record, "arguments": qat_arguments(chosen, params, lr, len(calibration), settings["opset"])}
    else:
        aware_path.unlink()
    qat |= {"ran": True, "kept": kept, "qat_validation_accuracy": aware, "epochs": params.qat_epochs, "lr": lr,
            **trained}  # fmt: skip
    return {**record, "qat": qat}


def qat_arguments(chosen: QuantSettings, params: Params, lr: float, calibration_images: int, opset: int) -> dict:
    """What the quantization-aware int8 file is, in the terms of `arguments` (pipeline/training/qat.py has why)."""
    return {
        "quant_format": "QDQ",
        "method": "quantization-aware training (fake quantization with onnxruntime's QDQ arithmetic)",
        "per_channel": True,
        "reduce_range": chosen.reduce_range,
        "activation_type": chosen.activation_type,
        "activation_range": list(ACTIVATION_RANGES[chosen.activation_type]),
        "weight_type": "int8",
        "weight_symmetric": True,
        "bias_type": "int32",
        "calibration": f"minmax over {calibration_images} training images, then a moving average ({MOMENTUM})",
        "epochs": params.qat_epochs,
        "lr": lr,
        "opset": opset,
        "onnxruntime": onnxruntime.__version__,
    }


def variant_settings(variant: dict[str, Any]) -> dict[str, Any]:
    return {key: variant[key] for key in ("method", "per_channel", "activation_type", "reduce_range")}


def qat_summary(models: dict[str, dict]) -> str:
    parts = []
    for name, model in models.items():
        qat = model["qat"]
        if qat is None:
            continue
        ptq = f"post-training loses {qat['ptq_drop']:.4f} of validation accuracy"
        if not qat["ran"]:
            parts.append(f"{name}: {ptq} (max_drop {qat['max_drop']}), no QAT")
            continue
        parts.append(
            f"{name}: {ptq}; quantization-aware {qat['qat_validation_accuracy']:.4f} against post-training "
            f"{qat['ptq_validation_accuracy']:.4f} (fp32 {qat['fp32_validation_accuracy']:.4f}), kept {qat['kept']}"
        )
    return "; " + "; ".join(parts) if parts else ""


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
