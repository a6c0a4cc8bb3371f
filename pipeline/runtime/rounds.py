"""Latency that repeats: every job timed in interleaved rounds, each time in a fresh session, disturbed rounds redone.

A job is one model at one batch size with its session settings; calling it creates a fresh session, warms it up
and returns the milliseconds of its timed runs. The method, stated in every report (`method()`):

1. `rounds` rounds; in each, every job is timed once, the order rotated by one place per round, so no job always
   runs right after the same other one and slow drift (frequency, another process) falls on all jobs alike.
2. A job's reference is the median of its rounds' medians. A round whose median lies more than `tolerance` (a
   fraction) from it was disturbed: it is dropped and the job is timed again in an extra round, among the disturbed
   jobs only, up to `retries` times.
3. A job with a disturbed round left after its retries is marked unstable, and the report says so.
4. Its statistics (percentiles, the p90 interval, the histogram) come from the pooled runs of its kept rounds; its
   `spread` is (slowest - fastest) / median of the kept rounds' medians.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Job = Callable[[], np.ndarray]


def measure(jobs: dict[str, Job], rounds: int, tolerance: float, retries: int) -> dict[str, dict[str, Any]]:
    """{job name: {"times": pooled ms of kept rounds, "round_medians", "dropped_medians", "spread", "stable"}}."""
    names = list(jobs)
    kept: dict[str, list[np.ndarray]] = {name: [] for name in names}
    dropped: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            kept[name].append(jobs[name]())
    for _ in range(retries):
        redo = {name: bad for name in names if (bad := disturbed(kept[name], tolerance))}
        if not redo:
            break
        for name, bad in redo.items():
            dropped[name] += [float(np.median(kept[name][i])) for i in bad]
            kept[name] = [times for i, times in enumerate(kept[name]) if i not in bad]
        for extra in range(max(len(bad) for bad in redo.values())):
            for name, bad in redo.items():  # interleaved among the disturbed jobs
                if extra < len(bad):
                    kept[name].append(jobs[name]())
    return {name: summary(kept[name], dropped[name], tolerance) for name in names}


def disturbed(rounds: list[np.ndarray], tolerance: float) -> list[int]:
    """Indices of the rounds whose median lies more than `tolerance` from the median of all rounds' medians."""
    medians = np.array([np.median(times) for times in rounds])
    reference = np.median(medians)
    return [i for i, median in enumerate(medians) if abs(median - reference) > tolerance * reference]


def summary(rounds: list[np.ndarray], dropped: list[float], tolerance: float) -> dict[str, Any]:
    medians = [float(np.median(times)) for times in rounds]
    reference = float(np.median(medians))
    return {
        "times": np.concatenate(rounds),
        "round_medians": medians,
        "dropped_medians": dropped,
        "spread": (max(medians) - min(medians)) / reference if reference > 0 else 0.0,
        "stable": not disturbed(rounds, tolerance),
    }


def method(rounds: int, tolerance: float, retries: int, preset: dict[str, float]) -> dict[str, Any]:
    """The measuring method, as a report states it."""
    return {
        "rounds": rounds,
        "order": "every model and batch once per round, rotated by one place each round",
        "fresh_session_per_round": True,
        "disturbed_round": f"round median more than {tolerance:.0%} from the median of the rounds' medians",
        "retries": retries,
        "statistics": "percentiles of the pooled runs of the kept rounds; spread = (slowest - fastest) / median of "
        "the kept rounds' medians",
        "per_round": dict(preset),
    }
