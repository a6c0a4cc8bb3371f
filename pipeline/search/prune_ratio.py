"""Search the least pruning ratio whose measured latency meets a budget. Pure: measuring is the caller's job.

`search_ratio` takes a `measure(ratio) -> {"latency_ms": ..., ...}` function (in the prune stage: prune a copy of
the student, export it, quantize it if int8 will be deployed, time it in onnxruntime) and returns a
JSON-serialisable decision. It never trains, so a candidate costs seconds.

Method, chosen because latency is not monotone in the ratio (channel counts that suit the kernels, int8 overhead
on thin layers: ../shared/FACTS.md), so plain bisection over [0, max] can step over the answer:

1. Scan the grid 0, step, 2*step, ... up to max_ratio in increasing order and stop at the first ratio that meets
   the limit (budget * (1 - margin)). Everything below it was measured and missed.
2. Bisect `refine` times between that ratio and the grid point below it (which missed), to prune less where the
   curve allows.
3. The decision is the least measured ratio that met the limit. If none did, the budget is unreachable with this
   model (or the time ran out): the decision is the measured ratio with the lowest latency, marked not met.

Every measurement goes into the trace (ratio -> latency). The candidates depend only on the arguments and the
measurements, so the search is deterministic given them; the stage's cache keeps the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Measure = Callable[[float], dict[str, Any]]


def grid(max_ratio: float, step: float) -> list[float]:
    """0, step, 2*step, ... below max_ratio, then max_ratio; rounded so that the ratios print and hash cleanly."""
    count = int(max_ratio / step + 1e-9)
    points = [round(i * step, 6) for i in range(count + 1)]
    return points if points[-1] >= max_ratio - 1e-9 else [*points, round(max_ratio, 6)]


def search_limit(budget_ms: float, margin: float) -> float:
    """What a search must measure to meet a budget: budget * (1 - prune.search_margin), headroom for noise."""
    return budget_ms * (1 - margin)


def search_ratio(
    measure: Measure,
    budget_ms: float,
    margin: float,
    max_ratio: float,
    step: float,
    refine: int,
    time_budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The least ratio whose measured latency is <= budget_ms * (1 - margin); see the module docstring."""
    limit = search_limit(budget_ms, margin)
    started = clock()
    trace: list[dict[str, Any]] = []
    out_of_time = False

    def meets(ratio: float) -> bool | None:
        """Measure `ratio` (once) and say whether it meets the limit; None when the time budget is spent."""
        nonlocal out_of_time
        if clock() - started >= time_budget_s and trace:  # the first candidate always runs
            out_of_time = True
            return None
        result = measure(ratio)
        trace.append({"ratio": ratio, **result, "meets_limit": result["latency_ms"] <= limit})
        return trace[-1]["meets_limit"]

    points = grid(max_ratio, step)
    below = None  # the grid point under the first that met the limit
    for index, ratio in enumerate(points):
        verdict = meets(ratio)
        if verdict is None:
            break
        if verdict:
            below = points[index - 1] if index > 0 else None
            break
    if below is not None:
        low, high = below, min(e["ratio"] for e in trace if e["meets_limit"])
        for _ in range(refine):
            middle = round((low + high) / 2, 6)
            if middle in (low, high):
                break
            verdict = meets(middle)
            if verdict is None:
                break
            low, high = (low, middle) if verdict else (middle, high)
    return decide(trace, budget_ms, limit, margin, out_of_time, clock() - started)


def decide(
    trace: list[dict[str, Any]], budget_ms: float, limit: float, margin: float, out_of_time: bool, seconds: float
) -> dict[str, Any]:
    met = [e for e in trace if e["meets_limit"]]
    chosen = least_ratio(met) if met else min(trace, key=lambda e: (e["latency_ms"], e["ratio"]))
    decision = {
        "ratio": chosen["ratio"],
        "met": bool(met),
        "budget_ms": budget_ms,
        "margin": margin,
        "limit_ms": limit,
        "predicted_ms": chosen["latency_ms"],
        "out_of_time": out_of_time,
        "seconds": seconds,
        "trace": trace,
    }
    if not met:
        why = "prune.search_budget_s ran out first" if out_of_time else "no ratio up to prune.max_ratio met it"
        decision["message"] = (
            f"latency budget {budget_ms:g} ms (limit {limit:.4g} ms with margin {margin:g}) not reached: {why}; "
            f"the closest measured is {chosen['latency_ms']:.4g} ms at ratio {chosen['ratio']:g}"
        )
    return decision


def least_ratio(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The uniform search keeps the least pruning."""
    return min(entries, key=lambda e: e["ratio"])
