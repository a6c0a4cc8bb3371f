"""Latency of an onnxruntime session: warm up, then time single runs until a count and a duration are met."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def measure(
    sess: ort.InferenceSession, feed: dict[str, np.ndarray], warmup_runs: int, min_runs: int, min_seconds: float
) -> dict[str, float]:
    """p50/p90/p99 in milliseconds over at least `min_runs` runs and `min_seconds` of timing."""
    for _ in range(warmup_runs):  # allocation and first-run costs are not latency
        sess.run(None, feed)
    times = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter_ns()
        sess.run(None, feed)
        times.append(time.perf_counter_ns() - begin)
    return summarize(np.array(times, dtype=np.float64) / 1e6)


def summarize(times_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(times_ms.mean()),
        "runs": int(len(times_ms)),
    }
