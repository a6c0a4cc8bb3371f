"""bench: accuracy and latency of every ONNX model in onnxruntime, with the environment recorded.

Accuracy is computed on the test split by onnxruntime itself (what ships is what is measured).
Latency: a fixed input batch of test images per batch size, warm-up runs, then timed single runs
until both `min_runs` and `min_seconds` are met; p50/p90/p99 in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import environment
from pipeline.cache import Artifact
from pipeline.errors import require
from pipeline.latency import measure
from pipeline.onnx_tools import INPUT_NAME, run_batches, session, session_options_record
from pipeline.train import normalize
from stages import data

NAME = "bench"
SECTION = "bench"
VERSION = 3
INPUTS = ("data", "export", "quantize")
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
    threads: int = 2  # onnxruntime intra-op threads
    warmup_runs: int = 20
    min_runs: int = 200  # at least this many timed runs (p99 needs a few hundred)...
    min_seconds: float = 0.5  # ...and at least this long

    def __post_init__(self):
        require(all(b >= 1 for b in self.batch_sizes), "bench.batch_sizes", list(self.batch_sizes), "integers >= 1")
        require(self.threads >= 1, "bench.threads", self.threads, "an integer >= 1")
        require(self.warmup_runs >= 0, "bench.warmup_runs", self.warmup_runs, "an integer >= 0")
        require(self.min_runs >= 1, "bench.min_runs", self.min_runs, "an integer >= 1")
        require(self.min_seconds >= 0, "bench.min_seconds", self.min_seconds, "a number >= 0")


def model_facts(name: str, inputs: dict[str, Artifact]) -> dict[str, Any]:
    """Where a model is, its hash, and its size and work (int8 keeps the pruned model's counts)."""
    stage, file = MODELS[name]
    artifact = inputs[stage]
    fp32_source = {"int8": "pruned", "student_int8": "student"}.get(name, name)  # quantizing keeps the counts
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


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = data.load(inputs["data"])
    test_inputs = normalize(torch.from_numpy(dataset.test_images), *dataset.norm).numpy()
    models = []
    teacher_predictions = None
    for name, (stage, file) in MODELS.items():
        sess = session(inputs[stage].file(file), threads=params.threads)
        predictions = run_batches(sess, test_inputs).argmax(1)
        teacher_predictions = predictions if teacher_predictions is None else teacher_predictions
        latency = {}
        for batch in params.batch_sizes:
            feed = {INPUT_NAME: np.ascontiguousarray(np.resize(test_inputs, (batch, *test_inputs.shape[1:])))}
            latency[str(batch)] = measure(sess, feed, params.warmup_runs, params.min_runs, params.min_seconds)
        models.append(
            {
                **model_facts(name, inputs),
                "accuracy": float((predictions == dataset.test_labels).mean()),
                "agreement_with_teacher": float((predictions == teacher_predictions).mean()),
                **class_breakdown(dataset.test_labels, predictions, len(dataset.class_names)),
                "latency": {PROVIDER: latency},
            }
        )
    results = {
        "models": models,
        "environment": environment.describe(params.threads),
        "session_options": session_options_record(params.threads),
        "method": {"warmup_runs": params.warmup_runs, "min_runs": params.min_runs, "min_seconds": params.min_seconds},
    }
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    batch = str(params.batch_sizes[0])
    line = ", ".join(
        f"{m['name']} {m['accuracy']:.4f} / {m['latency'][PROVIDER][batch]['p50_ms']:.3f} ms" for m in models
    )
    return {**results, "summary": f"accuracy / p50 at batch {batch}: {line}"}
