"""bench: accuracy, latency and memory of every ONNX model in onnxruntime, each with its own fastest settings.

1. Settings: with `bench.tune`, each model's session settings (intra-op threads, spinning, graph optimization) are
   searched at `bench.settings_batch` on this machine (pipeline/runtime/tuning.py); the winner is what the model is
   measured, gated and shipped with.
2. Accuracy, computed by onnxruntime itself with those settings (what ships is what is measured) on the validation
   split, which the report chooses on, and on the test split, which it only reports; each with its 95% Wilson
   interval and the per-image correctness that paired comparisons between models need. Inputs are preprocessed by
   the release's own code (pipeline/runtime/predict.py), so predict.py reproduces these accuracies.
3. Latency in interleaved rounds (pipeline/runtime/rounds.py): every model and batch size once per round, each in
   a fresh session, on real validation images; disturbed rounds are re-measured.
4. Memory: the peak resident memory of a fresh process running each model (pipeline/runtime/memory.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import require
from pipeline.reporting.intervals import accuracy_with_interval
from pipeline.runtime import environment, memory, rounds, tuning
from pipeline.runtime.latency import SIGN_OFF, summarize
from pipeline.runtime.predict import normalize
from pipeline.runtime.sessions import INPUT_NAME, OPTIMIZATION_LEVELS, SessionSettings, run_batches, session
from pipeline.runtime.timing import PROVIDERS, ProviderUnavailable, time_session

NAME = "bench"
SECTION = "bench"
VERSION = 7
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
    providers: tuple[str, ...] = ("cpu", "cuda")  # cpu always; cuda only when onnxruntime has it (else skipped)
    tune: bool = True  # search each model's fastest session settings; false: the first of each list below
    settings_batch: int = 1  # the batch the settings are tuned at: where models are compared (signoff.latency_batch)
    threads: tuple[int, ...] | None = None  # intra-op thread counts tried; null: 1 up to this machine's cores
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
            "cpu" in self.providers and set(self.providers) <= set(PROVIDERS),
            "bench.providers",
            list(self.providers),
            f"a list with cpu, from {', '.join(PROVIDERS)}",
        )
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
    """The machine measured on: another machine's latencies and settings are not this one's."""
    return {"machine": environment.identity()}


def timing(params: Params) -> dict[str, Any]:
    """Warm-up and timing minimums of one round; with sign_off, all rounds together reach MLPerf's minimums."""
    chosen = {key: getattr(params, key) for key in SIGN_OFF}
    if params.sign_off:
        chosen["min_runs"] = max(chosen["min_runs"], math.ceil(SIGN_OFF["min_runs"] / params.rounds))
        chosen["min_seconds"] = max(chosen["min_seconds"], SIGN_OFF["min_seconds"] / params.rounds)
    return chosen


def candidates(params: Params) -> list[SessionSettings]:
    """The session settings tried for every model (just the first of each list without tuning)."""
    threads = params.threads or tuple(range(1, environment.cores() + 1))
    if not params.tune:
        return [SessionSettings(threads[0], params.spinning[0], params.optimization[0])]
    return tuning.candidates(threads, params.spinning, params.optimization)


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


def measure_latency(
    paths: dict[str, Path], settings: dict[str, SessionSettings], params: Params, feeds: dict[int, dict]
) -> tuple[dict[str, dict], dict[str, str]]:
    """{model: {provider: {batch: stats}}} from interleaved rounds, and the providers skipped."""
    latency: dict[str, dict] = {name: {} for name in paths}
    skipped = {}
    for provider in params.providers:
        jobs = {
            (name, batch): job(paths[name], provider, settings[name], feeds[batch], timing(params), batch)
            for name in paths
            for batch in params.batch_sizes
        }
        try:
            measured = rounds.measure(
                {f"{n}@{b}": j for (n, b), j in jobs.items()}, params.rounds, params.tolerance, params.retries
            )
        except ProviderUnavailable as reason:
            skipped[provider] = str(reason)  # reported, never replaced by CPU
            continue
        for name, batch in jobs:
            result = measured[f"{name}@{batch}"]
            stats = {
                **summarize(result["times"], batch),
                "round_medians_ms": result["round_medians"],
                "dropped_rounds_ms": result["dropped_medians"],
                "spread": result["spread"],
                "stable": result["stable"],
            }
            latency[name].setdefault(PROVIDERS[provider][0], {})[str(batch)] = stats
    return latency, skipped


def job(path: Path, provider: str, settings: SessionSettings, feed: dict, preset: dict, batch: int) -> rounds.Job:
    return lambda: time_session(path, provider, settings, feed, preset, batch)[0]


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    test_inputs = normalize(dataset.test_images, *dataset.norm)
    validation_inputs = normalize(dataset.val_images, *dataset.norm)
    # Latency inputs: real validation images, repeated to fill the batch.
    shape = validation_inputs.shape[1:]
    feeds = {
        b: {INPUT_NAME: np.resize(validation_inputs, (b, *shape))} for b in (*params.batch_sizes, params.settings_batch)
    }
    paths = {name: inputs[stage].file(file) for name, (stage, file) in MODELS.items()}
    settings, searches = {}, {}
    for name, path in paths.items():
        feed = feeds[params.settings_batch]
        settings[name], _, searches[name] = tuning.tune(path, "cpu", feed, params.settings_batch, candidates(params))
    latency, skipped = measure_latency(paths, settings, params, feeds)
    models = []
    teacher_predictions = None  # MODELS lists the teacher first
    for name, path in paths.items():
        sess = session(path, settings[name])
        predictions = run_batches(sess, test_inputs).argmax(1)
        validation_predictions = run_batches(sess, validation_inputs).argmax(1)
        teacher_predictions = predictions if teacher_predictions is None else teacher_predictions
        footprint = memory.peak_memory(path, settings[name], [params.settings_batch, *shape]) if params.memory else None
        models.append(
            {
                **model_facts(name, inputs),
                **accuracies(predictions == dataset.test_labels, validation_predictions == dataset.val_labels),
                "agreement_with_teacher": float((predictions == teacher_predictions).mean()),
                **class_breakdown(dataset.test_labels, predictions, len(dataset.class_names)),
                "settings": settings[name].record(),
                "settings_label": settings[name].label(),
                "settings_search": searches[name],
                "latency": latency[name],
                "memory": footprint,
            }
        )
    results = {
        "models": models,
        "environment": environment.describe(),
        "machine": environment.identity(),
        "method": {
            **rounds.method(params.rounds, params.tolerance, params.retries, timing(params)),
            "sign_off": params.sign_off,
            "settings": f"tuned per model at batch {params.settings_batch}" if params.tune else "fixed",
        },
        "skipped_providers": skipped,
    }
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    batch = str(params.settings_batch)
    line = ", ".join(
        f"{m['name']} {m['validation_accuracy']:.4f} / {m['latency'][PROVIDER][batch]['p50_ms']:.3f} ms"
        for m in models
        if batch in m["latency"].get(PROVIDER, {})
    )
    return {**results, "summary": f"validation accuracy / p50 at batch {batch} with tuned settings: {line}"}
