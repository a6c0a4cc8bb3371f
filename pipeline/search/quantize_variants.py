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

from pipeline.runtime import environment, latency, rounds, tuning
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
    feed = {INPUT_NAME: np.resize(inputs, (params.search_batch, *inputs.shape[1:]))}
    isa = environment.isa()
    results, paths = [], []
    with tempfile.TemporaryDirectory(prefix="edgeforge-quantize-search-") as work:
        for index, variant in enumerate(variants(params.search_methods, isa, environment.is_x86())):
            paths.append(Path(work) / f"variant{index}.onnx")
            settings = QuantSettings(
                calibration_batch=params.calibration_batch, weight_type=params.weight_type, **variant
            )
            quantize(source, paths[-1], calibration, settings)
            results.append({**variant, "validation_accuracy": validation_accuracy(paths[-1], inputs, labels)})
        tried = [SessionSettings(params.search_threads)] if params.search_threads else default_candidates()
        session_settings, _, _ = tuning.tune(paths[0], "cpu", feed, params.search_batch, tried, *SEARCH_TIMING)
        jobs = {str(i): timed(path, session_settings, feed, params.search_batch) for i, path in enumerate(paths)}
        for i, measured in rounds.measure(jobs, ROUNDS, tolerance=0.1, retries=1).items():
            results[int(i)]["p50_ms"] = float(np.median(measured["round_medians"]))
        chosen = choose(results, params.search_tolerance)
        shutil.copyfile(Path(work) / f"variant{chosen}.onnx", target)
    return {
        "fp32_validation_accuracy": validation_accuracy(source, inputs, labels),
        "variants": results,
        "chosen": chosen,
        "isa": isa,
        "vnni": environment.has_vnni(isa),
        "x86": environment.is_x86(),
        "method": {
            "batch": params.search_batch,
            "settings": session_settings.label(),
            "rounds": ROUNDS,
            "timing": SEARCH_TIMING[1],
        },
    }


def default_candidates() -> list[SessionSettings]:
    return tuning.candidates(tuple(range(1, environment.cores() + 1)), (False, True), tuning.all_levels())


def timed(path: Path, settings: SessionSettings, feed: dict, batch: int) -> rounds.Job:
    return lambda: time_session(path, "cpu", settings, feed, SEARCH_TIMING[1], batch)[0]
