"""bench: accuracy, latency and memory of every ONNX model in onnxruntime, each with its own fastest settings, on
this machine and on every device named in `bench.targets` (over SSH: pipeline/runtime/remote.py).

Everywhere the same code measures (pipeline/runtime/device.py):

1. Settings: with `bench.tune`, each model's session settings (intra-op threads, spinning, graph optimization) are
   searched at `bench.settings_batch` on this machine (pipeline/runtime/tuning.py). A winner of more than one thread
   is timed beside the model's fastest one-thread setting in the rounds of step 3, and the faster over the rounds is
   what the model is measured, gated and shipped with (pipeline/runtime/one_thread_rival.py).
2. Accuracy, computed by onnxruntime itself with those settings (what ships is what is measured) on the validation
   split, which the report chooses on, and on the test split, which it only reports; each with its 95% Wilson
   interval and the per-image correctness that paired comparisons between models need. Inputs are preprocessed by
   the release's own code (pipeline/runtime/predict.py), so predict.py reproduces these accuracies.
3. Latency in interleaved rounds (pipeline/runtime/rounds.py): every model and batch size once per round, each in
   a fresh session, on real validation images; disturbed rounds are re-measured.
4. Memory: the peak resident memory of a fresh process running each model (pipeline/runtime/memory.py).

Each target's results are kept apart (`targets` of every model); the report compares and gates the models on
`signoff.latency_target`. With `bench.target_accuracy`, a device also recomputes the test accuracy with its own
onnxruntime (int8 kernels differ between instruction sets).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import Artifact
from pipeline.datasets.artifact import load_dataset, read_rows
from pipeline.errors import require
from pipeline.reporting.intervals import test_and_validation
from pipeline.runtime import device, environment, rounds, targets
from pipeline.runtime.latency import SIGN_OFF
from pipeline.runtime.predict import normalize
from pipeline.runtime.sessions import OPTIMIZATION_LEVELS, SessionSettings
from pipeline.runtime.timing import PROVIDER_NAMES, is_provider, parse_provider_options

NAME = "bench"
SECTION = "bench"
VERSION = 10  # 10: a model searched at more than one thread is timed at one thread beside it in the rounds
# 9: every latency records the 95% intervals of its p95 and p99 (latency_basis: bound reads them)
INPUTS = ("data", "export", "quantize")
TRAINS = False
OUTPUTS = ("bench.json",)
MODELS = {
    "teacher": ("export", "teacher.onnx"),
    "student": ("export", "student.onnx"),
    "pruned": ("export", "pruned.onnx"),
    "int8": ("quantize", "int8.onnx"),
    "student_int8": ("quantize", "student_int8.onnx"),
}  # name -> (stage, file)
PROVIDER = "CPUExecutionProvider"


@dataclasses.dataclass(frozen=True)
class Params:
    batch_sizes: tuple[int, ...] = (1, 32)  # latency is measured at each
    # Execution providers: cpu, cuda, tensorrt, openvino, xnnpack, coreml, dml, qnn, ... or a full onnxruntime name;
    # one a target's onnxruntime lacks is reported as skipped there, never replaced by the CPU.
    providers: tuple[str, ...] = ("cpu", "cuda")
    provider_options: tuple[str, ...] = ()  # "PROVIDER:KEY=VALUE", e.g. "openvino:device_type=CPU"
    targets: tuple[str, ...] = ("local",)  # where to measure: local, and devices as ssh://[user@]host[:port][?python=]
    target_timeout_s: float = 600.0  # the longest one call to a device may take before the stage fails
    target_accuracy: bool = False  # devices also recompute the test accuracy with their own onnxruntime
    tune: bool = True  # search each model's fastest session settings; false: the first of each list below
    settings_batch: int = 1  # the batch the settings are tuned at: where models are compared (signoff.latency_batch)
    # intra-op thread counts tried; null: 1 up to each target's cores. One count: the device gives the model that many,
    # and the prune and quantize searches follow it (stages/__init__.py)
    threads: tuple[int, ...] | None = None
    spinning: tuple[bool, ...] = (False, True)  # whether idle intra-op threads spin
    optimization: tuple[str, ...] = ("all", "extended", "basic")  # graph optimization levels tried
    rounds: int = 5  # every model and batch is timed once per round, in a fresh session
    tolerance: float = 0.1  # a round whose median is this far from the median of the rounds' is re-measured
    retries: int = 2  # ...up to this many times
    warmup_runs: int = 20  # per round: warm-up is both this many runs...
    warmup_seconds: float = 0.05  # ...and this long
    min_runs: int = 100  # per round: timed runs, at least this many...
    min_seconds: float = 0.2  # ...and at least this long
    sign_off: bool = False  # in all rounds together at least MLPerf single-stream's 1,024 runs and 60 s
    memory: bool = True  # peak resident memory of a fresh process running each model

    def __post_init__(self):
        require(all(b >= 1 for b in self.batch_sizes), "bench.batch_sizes", list(self.batch_sizes), "integers >= 1")
        require(
            "cpu" in self.providers and all(map(is_provider, self.providers)),
            "bench.providers",
            list(self.providers),
            f"a list with cpu, from {PROVIDER_NAMES}",
        )
        parse_provider_options(self.provider_options)
        require(len(set(self.targets)) == len(self.targets) >= 1, "bench.targets", list(self.targets), "distinct")
        for target in self.targets:
            targets.check(target)
        require(self.target_timeout_s > 0, "bench.target_timeout_s", self.target_timeout_s, "seconds > 0")
        require(self.settings_batch >= 1, "bench.settings_batch", self.settings_batch, "an integer >= 1")
        threads = self.threads or (1,)
        require(all(t >= 1 for t in threads), "bench.threads", self.threads, "null or integers >= 1")
        levels = ", ".join(OPTIMIZATION_LEVELS)
        require(set(self.optimization) <= set(OPTIMIZATION_LEVELS), "bench.optimization", self.optimization, levels)
        require(self.rounds >= 1, "bench.rounds", self.rounds, "an integer >= 1")
        require(0 < self.tolerance < 1, "bench.tolerance", self.tolerance, "a fraction in (0, 1)")
        require(self.retries >= 0, "bench.retries", self.retries, "an integer >= 0")
        require(self.warmup_runs >= 0, "bench.warmup_runs", self.warmup_runs, "an integer >= 0")
        require(self.warmup_seconds >= 0, "bench.warmup_seconds", self.warmup_seconds, "a number >= 0")
        require(self.min_runs >= 1, "bench.min_runs", self.min_runs, "an integer >= 1")
        require(self.min_seconds >= 0, "bench.min_seconds", self.min_seconds, "a number >= 0")


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """The machines measured on: another machine's latencies and settings are not this one's (a device is asked
    who it is, so a different board behind the same address measures again)."""
    identities = {target: targets.identity(target, params.target_timeout_s) for target in params.targets}
    return {"machine": environment.identity(), "targets": identities}


def timing(params: Params) -> dict[str, Any]:
    """Warm-up and timing minimums of one round; with sign_off, all rounds together reach MLPerf's minimums."""
    chosen = {key: getattr(params, key) for key in SIGN_OFF}
    if params.sign_off:
        chosen["min_runs"] = max(chosen["min_runs"], math.ceil(SIGN_OFF["min_runs"] / params.rounds))
        chosen["min_seconds"] = max(chosen["min_seconds"], SIGN_OFF["min_seconds"] / params.rounds)
    return chosen


def model_facts(name: str, inputs: dict[str, Artifact]) -> dict[str, Any]:
    """Where a model is, its hash, and its size and work (int8 keeps the pruned model's counts)."""
    stage, file = MODELS[name]
    artifact = inputs[stage]
    quantized = inputs["quantize"].metrics["models"]  # int8 name -> {"source": "pruned.onnx", ...}
    fp32_source = quantized[name]["source"].removesuffix(".onnx") if name in quantized else name  # same counts
    counted = inputs["export"].metrics["models"][fp32_source]
    return {
        "name": name,
        "stage": stage,
        "key": artifact.key,
        "file": file,
        "sha256": artifact.manifest["files"][file],
        "params": counted["params"],
        "macs": counted["macs"],
        "size_bytes": artifact.file(file).stat().st_size,
    }


def class_breakdown(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class accuracy and the confusion matrix (rows: true class, columns: predicted): which classes
    compression hurt."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"per_class_accuracy": per_class.round(6).tolist(), "confusion_matrix": confusion.tolist()}


def request(params: Params, files: dict[str, dict[str, str]], accuracy: dict[str, Any] | None) -> dict[str, Any]:
    """What a target is asked to measure (pipeline/runtime/device.py reads it)."""
    return {
        "op": "bench",
        "models": files["models"],
        "feeds": files["feeds"],
        "settings_batch": params.settings_batch,
        "batch_sizes": list(params.batch_sizes),
        "providers": list(params.providers),
        "provider_options": parse_provider_options(params.provider_options),
        "tune": params.tune,
        "threads": list(params.threads) if params.threads else None,
        "spinning": list(params.spinning),
        "optimization": list(params.optimization),
        "rounds": params.rounds,
        "tolerance": params.tolerance,
        "retries": params.retries,
        "preset": timing(params),
        "memory": params.memory,
        "accuracy": accuracy,
    }


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    paths = {name: inputs[stage].file(file) for name, (stage, file) in MODELS.items()}
    with tempfile.TemporaryDirectory(prefix="edgeforge-bench-") as work:
        files, located = stage_files(paths, dataset, params, Path(work))
        accuracy = {"images": files["images"], "mean": dataset.mean, "std": dataset.std}
        measured = {target: measure_on(target, params, files, located, accuracy) for target in params.targets}
        predicted = local_predictions(measured, files, located, accuracy)
    models = results(paths, inputs, dataset, predicted, measured, params)
    bench = {
        "models": models,
        "environment": environment.describe(),
        "machine": environment.identity(),
        "targets": {name: result["environment"] for name, result in measured.items()},
        "method": {
            **rounds.method(params.rounds, params.tolerance, params.retries, timing(params)),
            "sign_off": params.sign_off,
            "settings": tuned_text(params) if params.tune else "fixed",
        },
        "skipped_providers": measured[params.targets[0]]["skipped_providers"],
        "skipped_by_target": {name: result["skipped_providers"] for name, result in measured.items()},
    }
    (out_dir / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    return {**bench, "summary": summary_line(models, params)}


def tuned_text(params: Params) -> str:
    """How tuned settings were chosen, as the report's method states it."""
    return (
        f"tuned per model at batch {params.settings_batch}; a winner of more than one thread timed beside the "
        "model's fastest one-thread setting in every round, the faster over the rounds kept"
    )


def measure_on(
    target: str, params: Params, files: dict[str, Any], located: dict[str, Path], accuracy: dict[str, Any]
) -> dict[str, Any]:
    """One target's measurements (device.bench's answer). This machine computes the accuracies of record; a device
    the test split's with its own onnxruntime when bench.target_accuracy asks."""
    if target != targets.LOCAL:
        accuracy = {**accuracy, "images": {"test": files["images"]["test"]}} if params.target_accuracy else None
    return targets.bench(target, request(params, files, accuracy), located, params.target_timeout_s)


def local_predictions(
    measured: dict[str, dict], files: dict[str, Any], located: dict[str, Path], accuracy: dict[str, Any]
) -> dict[str, dict[str, list[int]]]:
    """{model: {split: predictions}} of this machine's onnxruntime: from the local target's measurement, or (no
    local target) computed here with default session settings."""
    if "local" in measured:
        return {name: model["predictions"] for name, model in measured["local"]["models"].items()}
    return {
        name: device.predictions(located[digest], SessionSettings(), accuracy, located.__getitem__)
        for name, digest in files["models"].items()
    }


def stage_files(
    paths: dict[str, Path], dataset, params: Params, work: Path
) -> tuple[dict[str, dict[str, str]], dict[str, Path]]:
    """Every file a target needs, named by sha256: the models, the latency inputs (real validation images, repeated
    to fill each batch) and the images accuracy is computed on (uint8; the target preprocesses them). Returns the
    request's names and where each sha256's file is here."""
    staged = targets.Files()
    batches = sorted({*params.batch_sizes, params.settings_batch})
    validation = normalize(read_rows(dataset.val_images, slice(0, batches[-1])), *dataset.norm)  # what feeds use
    feeds = {
        str(batch): staged.save(np.resize(validation, (batch, *validation.shape[1:])), work, f"feed-{batch}")
        for batch in batches
    }
    images = {
        split: stage_images(staged, array, work, split)
        for split, array in (("test", dataset.test_images), ("validation", dataset.val_images))
    }
    files = {"models": {name: staged.add(path) for name, path in paths.items()}, "feeds": feeds, "images": images}
    return files, staged.located


def stage_images(staged: targets.Files, images: np.ndarray, work: Path, split: str) -> str:
    """A split's uint8 images for the targets: the data artifact's own .npy file when memory-mapped (not copied)."""
    if isinstance(images, np.memmap) and images.filename is not None:
        return staged.add(Path(images.filename))
    return staged.save(images, work, split)


def results(paths, inputs, dataset, predicted, measured: dict[str, dict], params: Params) -> list[dict[str, Any]]:
    """One record per model: facts, accuracies (this machine's onnxruntime), and each target's measurements (the
    first target's also at the top level)."""
    models = []
    teacher = None  # MODELS lists the teacher first
    for name in paths:
        test, validation = (np.array(predicted[name][split]) for split in ("test", "validation"))
        teacher = test if teacher is None else teacher
        per_target = {target: target_record(result["models"][name], dataset) for target, result in measured.items()}
        first = per_target[params.targets[0]]
        models.append(
            {
                **model_facts(name, inputs),
                **test_and_validation(test == dataset.test_labels, validation == dataset.val_labels),
                "agreement_with_teacher": float((test == teacher).mean()),
                **class_breakdown(dataset.test_labels, test, len(dataset.class_names)),
                **{key: first[key] for key in device.MEASURED},
                "targets": per_target,
            }
        )
    return models


def target_record(measured: dict[str, Any], dataset) -> dict[str, Any]:
    record = {key: measured[key] for key in device.MEASURED}
    predictions = (measured.get("predictions") or {}).get("test")
    record["test_accuracy"] = (
        None if predictions is None else float((np.array(predictions) == dataset.test_labels).mean())
    )
    return record


def summary_line(models: list[dict], params: Params) -> str:
    batch = str(params.settings_batch)
    line = ", ".join(
        f"{m['name']} {m['validation_accuracy']:.4f} / {m['latency'][PROVIDER][batch]['p50_ms']:.3f} ms"
        for m in models
        if batch in m["latency"].get(PROVIDER, {})
    )
    return f"validation accuracy / p50 at batch {batch} on {params.targets[0]} with tuned settings: {line}"
