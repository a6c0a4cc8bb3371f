"""The quantize stage's variant search: try quantization settings, choose on the validation split.

Variants: per-tensor or per-channel weights, reduce_range (7-bit weights) or not, u8 or s8 activations, and the
calibration method (MinMax, Entropy, Percentile). Each is quantized, its accuracy measured on the validation split
(held out from all training by data.validation_fraction; the test split never drives a choice) and its latency
timed (p50, one onnxruntime session each).

The CPU's ISA decides what is worth trying. On x86 without VNNI, u8 x s8 products go through VPMADDUBSW, whose
16-bit intermediate saturates with full-range 8-bit weights (../shared/FACTS.md): u8-activation variants without
reduce_range are not tried there, since a validation split can miss the rare inputs that saturate. With VNNI
(VPDPBUSD accumulates in 32 bits) and on other architectures every combination is tried.

Choice: among variants within `search_tolerance` of the best validation accuracy, the fastest; p50s within
LATENCY_TIE of that count as tied and the most accurate of them wins (then the earlier in the list).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime import environment, latency, rounds, targets, tuning
from pipeline.runtime.predict import Normalized
from pipeline.runtime.quantization import QuantSettings, quantize
from pipeline.runtime.sessions import INPUT_NAME, SessionSettings, run_batches, session
from pipeline.runtime.timing import time_session

SEARCH_TIMING = (latency.SEARCH_SCREEN, latency.SEARCH)  # the settings search's screen and refine presets
ROUNDS = 3  # interleaved rounds of the variants' timing
LATENCY_TIE = 0.05  # about the run-to-run spread of a p50 this short


def variants(methods: tuple[str, ...], isa: list[str], x86: bool) -> list[dict[str, Any]]:
    """The settings to try, in a fixed order; see the module docstring for the ISA rule."""
    tried = []
    for method, per_channel, activation, reduce_range in itertools.product(
        methods, (True, False), ("uint8", "int8"), (True, False)
    ):
        if x86 and not environment.has_vnni(isa) and activation == "uint8" and not reduce_range:
            continue  # u8 x s8 can saturate without VNNI
        tried.append(
            {"method": method, "per_channel": per_channel, "activation_type": activation, "reduce_range": reduce_range}
        )
    return tried


def choose(results: list[dict[str, Any]], tolerance: float) -> int:
    """Index of the chosen variant: the fastest of the accurate ones, near-ties to the more accurate."""
    best = max(r["validation_accuracy"] for r in results)
    accurate = [i for i, r in enumerate(results) if r["validation_accuracy"] >= best - tolerance - 1e-12]
    fastest = min(results[i]["p50_ms"] for i in accurate)
    tied = [i for i in accurate if results[i]["p50_ms"] <= fastest * (1 + LATENCY_TIE)]
    return max(tied, key=lambda i: (results[i]["validation_accuracy"], -i))


def validation_accuracy(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    return float((run_batches(session(path), inputs).argmax(1) == labels).mean())


def search(
    source: Path, target: Path, calibration: np.ndarray, validation: tuple[np.ndarray, np.ndarray], params: Any
) -> dict[str, Any]:
    """Quantize `source` with every variant, write the chosen one to `target`; return what was tried.

    `params` are the quantize stage's: search_methods, search_tolerance, search_batch, search_threads, and the
    calibration_batch and weight_type every variant shares. The variants are timed in interleaved rounds, all at the
    session settings tuned for the first (or search_threads, fixed): they differ in their numbers, not their graph."""
    inputs, labels = validation
    feed = {INPUT_NAME: np.resize(inputs[: params.search_batch], (params.search_batch, *inputs.shape[1:]))}
    device = getattr(params, "search_device", targets.LOCAL)
    described = targets.describe(device, targets.TIMEOUT_S)  # the variants tried depend on the device's ISA
    isa, x86 = described["isa"], described["machine"].lower() in environment.X86_MACHINES
    results, paths = [], []
    with tempfile.TemporaryDirectory(prefix="edgeforge-quantize-search-") as work:
        for index, variant in enumerate(variants(params.search_methods, isa, x86)):
            paths.append(Path(work) / f"variant{index}.onnx")
            settings = QuantSettings(
                calibration_batch=params.calibration_batch, weight_type=params.weight_type, **variant
            )
            quantize(source, paths[-1], calibration, settings)
            results.append(dict(variant))
        measure = measure_here if device == targets.LOCAL else measure_on_device
        accuracies, p50s, session_settings = measure(paths, feed, validation, params, Path(work))
        for result, accuracy, p50 in zip(results, accuracies, p50s, strict=True):
            result.update(validation_accuracy=accuracy, p50_ms=p50)
        chosen = choose(results, params.search_tolerance)
        shutil.copyfile(Path(work) / f"variant{chosen}.onnx", target)
    return {
        "fp32_validation_accuracy": validation_accuracy(source, inputs, labels),
        "variants": results,
        "chosen": chosen,
        "device": device,
        "isa": isa,
        "vnni": environment.has_vnni(isa),
        "x86": x86,
        "method": {
            "batch": params.search_batch,
            "settings": session_settings.label(),
            "rounds": ROUNDS,
            "timing": SEARCH_TIMING[1],
        },
    }


def measure_here(
    paths: list[Path], feed: dict, validation: tuple[np.ndarray, np.ndarray], params: Any, work: Path
) -> tuple[list[float], list[float], SessionSettings]:
    """Each variant's validation accuracy and p50 on this machine, and the session settings they were timed at."""
    inputs, labels = validation
    accuracies = [validation_accuracy(path, inputs, labels) for path in paths]
    tried = [SessionSettings(params.search_threads)] if params.search_threads else default_candidates()
    settings, _, _ = tuning.tune(paths[0], "cpu", feed, params.search_batch, tried, *SEARCH_TIMING)
    jobs = {str(i): timed(path, settings, feed, params.search_batch) for i, path in enumerate(paths)}
    measured = rounds.measure(jobs, ROUNDS, tolerance=0.1, retries=1)
    return accuracies, [float(np.median(measured[str(i)]["round_medians"])) for i in range(len(paths))], settings


def measure_on_device(
    paths: list[Path], feed: dict, validation: tuple[np.ndarray, np.ndarray], params: Any, work: Path
) -> tuple[list[float], list[float], SessionSettings]:
    """The same on quantize.search_device, with its onnxruntime (int8 kernels differ between ISAs): the settings
    tuned there for the first variant, then every variant's accuracy and interleaved rounds at those settings."""
    device, batch = params.search_device, params.search_batch
    files = targets.Files()
    models = {str(i): files.add(path) for i, path in enumerate(paths)}
    feeds = {batch: files.save(feed[INPUT_NAME], work, "feed")}
    inputs = validation[0]
    if isinstance(inputs, Normalized):  # uint8 with mean and std: the device normalizes as the release does
        images = files.save(np.asarray(inputs.pixels), work, "validation")
        norm = {"mean": inputs.mean, "std": inputs.std}
    else:  # float32: the device takes them as they are
        images, norm = files.save(inputs, work, "validation"), {"mean": None, "std": None}
    fixed = [SessionSettings(params.search_threads)] if params.search_threads else None
    first = targets.request(
        {"0": models["0"]},
        feeds,
        batch,
        SEARCH_TIMING[1],
        settings=fixed,
        screen=SEARCH_TIMING[0],
        refine=SEARCH_TIMING[1],
        rounds=1,
    )
    tuned = targets.bench(device, first, files.located, targets.TIMEOUT_S)["models"]["0"]["settings"]
    settings = SessionSettings.from_record(tuned)
    accuracy = {"images": {"validation": images}, **norm}
    every = targets.request(
        models, feeds, batch, SEARCH_TIMING[1], settings=[settings], rounds=ROUNDS, accuracy=accuracy
    )
    answer = targets.bench(device, every, files.located, targets.TIMEOUT_S)["models"]
    measured = [answer[str(i)] for i in range(len(paths))]
    accuracies = [float((np.array(m["predictions"]["validation"]) == validation[1]).mean()) for m in measured]
    p50s = [float(np.median(m["latency"]["CPUExecutionProvider"][str(batch)]["round_medians_ms"])) for m in measured]
    return accuracies, p50s, settings


def default_candidates() -> list[SessionSettings]:
    return tuning.candidates(tuple(range(1, environment.cores() + 1)), (False, True), tuning.all_levels())


def timed(path: Path, settings: SessionSettings, feed: dict, batch: int) -> rounds.Job:
    return lambda: time_session(path, "cpu", settings, feed, SEARCH_TIMING[1], batch)[0]
