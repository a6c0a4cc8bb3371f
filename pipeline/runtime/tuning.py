"""The fastest session settings for one model: intra-op threads, spinning and graph optimization, measured.

No setting is best for every model: on the 2-core machines this project runs on, a tiny model ran fastest with one
thread and a big one with two threads spinning, and "two threads, spinning off" was the slowest setting for every
digits model (../shared/FACTS.md). So each model is tuned on the machine that measures it, at the batch size it is
judged at, cheaply, by successive halving:

1. Screen: every candidate (threads 1..cores x spinning on/off x optimization all/extended/basic) is timed once,
   briefly, each in a fresh session.
2. The faster half survives, and of those only the ones within `cutoff` of the best screen (the others cannot win).
3. Refine: the survivors are measured in interleaved rounds (pipeline/runtime/rounds.py); the lowest median wins.

The trace of every candidate goes into the report; the winner is what the model is benchmarked, gated and shipped
with (release/deploy.json).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime import rounds
from pipeline.runtime.sessions import OPTIMIZATION_LEVELS, SessionSettings
from pipeline.runtime.timing import time_session

SCREEN = dict(warmup_runs=10, warmup_seconds=0.02, min_runs=50, min_seconds=0.05)
REFINE = dict(warmup_runs=10, warmup_seconds=0.05, min_runs=100, min_seconds=0.1)
REFINE_ROUNDS = 3
CUTOFF = 0.5  # a setting screening more than 50% slower than the best screen is dropped


def candidates(threads: tuple[int, ...], spinning: tuple[bool, ...], levels: tuple[str, ...]) -> list[SessionSettings]:
    """Every combination, in a fixed order."""
    return [SessionSettings(t, s, o) for t, s, o in itertools.product(threads, spinning, levels)]


def all_levels() -> tuple[str, ...]:
    return tuple(OPTIMIZATION_LEVELS)


def tune(
    path: Path,
    provider: str,
    feed: dict[str, np.ndarray],
    batch: int,
    settings: list[SessionSettings],
    screen: dict[str, float] | None = None,
    refine: dict[str, float] | None = None,
    refine_rounds: int = REFINE_ROUNDS,
) -> tuple[SessionSettings, float, list[dict[str, Any]]]:
    """The fastest of `settings` for the model at `path` (see the module docstring), its p50 (the median of its
    refine rounds' medians) and the trace of every candidate. A single candidate is only refined."""
    screen, refine = screen or SCREEN, refine or REFINE
    screened: list[float | None] = [None] * len(settings)
    survivors = [0]
    if len(settings) > 1:
        screened = [float(np.median(time_session(path, provider, s, feed, screen, batch)[0])) for s in settings]
        best = min(screened)
        order = sorted(range(len(settings)), key=lambda i: screened[i])
        survivors = [i for i in order[: math.ceil(len(settings) / 2)] if screened[i] <= best * (1 + CUTOFF)]
    jobs = {str(i): _job(path, provider, settings[i], feed, refine, batch) for i in survivors}
    measured = rounds.measure(jobs, refine_rounds, tolerance=0.1, retries=1)
    refined = {int(i): float(np.median(result["round_medians"])) for i, result in measured.items()}
    winner = min(refined, key=lambda i: (refined[i], i))
    trace = [
        {
            "settings": s.record(),
            "label": s.label(),
            "screen_ms": screened[i],
            "refine_ms": refined.get(i),
            "chosen": i == winner,
        }
        for i, s in enumerate(settings)
    ]
    return settings[winner], refined[winner], trace


def _job(path: Path, provider: str, settings: SessionSettings, feed: dict, preset: dict, batch: int) -> rounds.Job:
    return lambda: time_session(path, provider, settings, feed, preset, batch)[0]
