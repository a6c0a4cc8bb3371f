"""bench: accuracy and latency of every ONNX model in onnxruntime, with the environment recorded.

Accuracy is computed by onnxruntime itself (what ships is what is measured) on the validation split, which the
report chooses on, and on the test split, which it only reports; each with its 95% Wilson interval and the
per-image correctness (packed bits) that paired comparisons between models need.
Latency: a fixed input batch of validation images per batch size, warm-up runs, then timed single runs
until both `min_runs` and `min_seconds` are met; p50/p90/p99 in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cache import Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import require
from pipeline.reporting.intervals import accuracy_with_interval
from pipeline.runtime import environment
from pipeline.runtime.latency import SIGN_OFF
from pipeline.runtime.sessions import INPUT_NAME, run_batches, session, session_options_record
from pipeline.runtime.timing import PROVIDERS, ProviderUnavailable, bench_one, peak_rss_bytes
from pipeline.training.augment import normalize

NAME = "bench"
SECTION = "bench"
VERSION = 6
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
    threads: tuple[int, ...] = (2,)  # intra-op threads, each in its own session; the first is the one compared
    providers: tuple[str, ...] = ("cpu", "cuda")  # cpu always; cuda only when onnxruntime has it (else skipped)
    warmup_runs: int = 20  # warm-up is both this many runs...
    warmup_seconds: float = 0.2  # ...and this long
    min_runs: int = 200  # timed runs: at least this many (p99 needs a few hundred)...
    min_seconds: float = 0.5  # ...and at least this long
    sign_off: bool = False  # at least MLPerf single-stream's 1,024 runs and 60 s per combination

    def __post_init__(self):
        require(all(b >= 1 for b in self.batch_sizes), "bench.batch_sizes", list(self.batch_sizes), "integers >= 1")
        require(all(t >= 1 for t in self.threads), "bench.threads", list(self.threads), "integers >= 1")
        require(
            "cpu" in self.providers and set(self.providers) <= set(PROVIDERS),
            "bench.providers",
            list(self.providers),
            f"a list with cpu, from {', '.join(PROVIDERS)}",
        )
        require(self.warmup_runs >= 0, "bench.warmup_runs", self.warmup_runs, "an integer >= 0")
        require(self.warmup_seconds >= 0, "bench.warmup_seconds", self.warmup_seconds, "a number >= 0")
        require(self.min_runs >= 1, "bench.min_runs", self.min_runs, "an integer >= 1")
        require(self.min_seconds >= 0, "bench.min_seconds", self.min_seconds, "a number >= 0")


def timing(params: Params) -> dict[str, Any]:
    """Warm-up and timing minimums, raised to the sign-off preset when asked for."""
    chosen = {key: getattr(params, key) for key in SIGN_OFF}
    if params.sign_off:
        chosen = {key: max(value, SIGN_OFF[key]) for key, value in chosen.items()}
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


def accuracies(test_correct: np.ndarray, validation_correct: np.ndarray) -> dict[str, Any]:
    """Test and validation accuracy, each with its 95% Wilson interval and per-image correctness (packed)."""
    test, validation = accuracy_with_interval(test_correct), accuracy_with_interval(validation_correct)
    return {
        "accuracy": test["accuracy"],
        "accuracy_interval": test["interval"],
        "test_correct": test["correct"],
        "test_images": test["images"],
        "validation_accuracy": validation["accuracy"],
        "validation_interval": validation["interval"],
        "validation_correct": validation["correct"],
        "validation_images": validation["images"],
    }


def measure_latency(path: Path, params: Params, feeds: dict[int, dict]) -> tuple[dict, dict[str, str]]:
    """{threads: {provider: {batch: stats}}} with one session per combination, and the providers skipped."""
    by_threads: dict[str, dict] = {str(t): {} for t in params.threads}
    skipped = {}
    for provider in params.providers:
        try:
            for threads in params.threads:
                for batch in params.batch_sizes:
                    result = bench_one(path, provider, threads, batch, feeds[batch], timing(params))
                    stats = {k: v for k, v in result.items() if k not in ("provider", "threads", "batch")}
                    by_threads[str(threads)].setdefault(PROVIDERS[provider][0], {})[str(batch)] = stats
        except ProviderUnavailable as reason:
            skipped[provider] = str(reason)  # reported, never replaced by CPU
    return by_threads, skipped


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    test_inputs = normalize(torch.from_numpy(dataset.test_images), *dataset.norm).numpy()
    validation_inputs = normalize(torch.from_numpy(dataset.val_images), *dataset.norm).numpy()
    # Latency inputs: real validation images, repeated to fill the batch.
    shape = validation_inputs.shape[1:]
    feeds = {b: {INPUT_NAME: np.resize(validation_inputs, (b, *shape))} for b in params.batch_sizes}
    models = []
    teacher_predictions = None  # MODELS lists the teacher first
    skipped: dict[str, str] = {}
    for name, (stage, file) in MODELS.items():
        path = inputs[stage].file(file)
        sess = session(path, threads=params.threads[0])
        predictions = run_batches(sess, test_inputs).argmax(1)
        validation_predictions = run_batches(sess, validation_inputs).argmax(1)
        teacher_predictions = predictions if teacher_predictions is None else teacher_predictions
        by_threads, skipped = measure_latency(path, params, feeds)
        models.append(
            {
                **model_facts(name, inputs),
                **accuracies(predictions == dataset.test_labels, validation_predictions == dataset.val_labels),
                "agreement_with_teacher": float((predictions == teacher_predictions).mean()),
                **class_breakdown(dataset.test_labels, predictions, len(dataset.class_names)),
                "latency": by_threads[str(params.threads[0])],
                "latency_by_threads": by_threads,
            }
        )
    results = {
        "models": models,
        "environment": environment.describe(params.threads[0]),
        "session_options": {**session_options_record(params.threads[0]), "intra_op_num_threads": list(params.threads)},
        "method": {**timing(params), "sign_off": params.sign_off, "one_session_per_combination": True},
        "skipped_providers": skipped,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    batch = str(params.batch_sizes[0])
    line = ", ".join(
        f"{m['name']} {m['validation_accuracy']:.4f} / {m['latency'][PROVIDER][batch]['p50_ms']:.3f} ms" for m in models
    )
    return {**results, "summary": f"validation accuracy / p50 at batch {batch}: {line}"}
