"""A model's settings held to the bench's rounds: where its settings search chose more than one intra-op thread, its
fastest one-thread setting (from the same search) is timed beside it in every round at the settings batch, and the
one whose rounds ran faster, the median of every round's median (rounds dropped as disturbed included), is what the
model is measured, gated and shipped with.

Why: the settings search times each setting in a burst of a second or two, and on a shared machine sessions of more
than one thread can run at two speeds for seconds to a minute at a time: a burst sees one of them. Measured on a
2-core AMD EPYC (Zen 4) VM with nothing else running (BENCHMARKS.md, "Two threads at two speeds"): one-thread sessions
of three CIFAR-10 models held within 1% for minutes, while their two-thread sessions (spinning on or off) switched
between two speeds about 2x apart (int8 resnet8_s2 x16: 0.048 and 0.099 ms), every model at once. In the CIFAR-10
profile's bench there the pruned model's search timed 2 threads at 0.054 ms, and its rounds at 0.090.

The rounds are spread over the whole bench (every model and batch once per round), so they sample both speeds where
a burst does not; the median is the speed the setting ran at most of the time. A setting of several threads that is
faster on most rounds keeps its place: on a quiet machine of its own it usually is (the teacher at 2 threads).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.runtime.sessions import SessionSettings

SUFFIX = "#one-thread"  # a rival's job name: the model's own, and this


def rival(trace: list[dict[str, Any]] | None, tried: list[SessionSettings], chosen: SessionSettings):
    """The fastest one-thread setting of a model's settings search (its screen's timing), None when the search chose
    one thread, tried none, or did not run (`trace` None: a single setting, nothing chosen)."""
    if trace is None or chosen.threads == 1:
        return None
    screened = [
        (e["screen_ms"], i) for i, e in enumerate(trace) if tried[i].threads == 1 and e["screen_ms"] is not None
    ]
    return tried[min(screened)[1]] if screened else None


def every_round(result: dict[str, Any]) -> list[float]:
    """Every round's median of a job (rounds.measure's result), the dropped ones after the kept."""
    return result["round_medians"] + result["dropped_medians"]


def held(searched: SessionSettings, one_thread: SessionSettings, theirs: list[float], ours: list[float]) -> dict:
    """The record of one model's check: `theirs` is every round's median of the searched setting in the rounds,
    `ours` the one-thread rival's (every_round), both at the settings batch."""
    searched_ms, one_thread_ms = float(np.median(theirs)), float(np.median(ours))
    return {
        "searched": searched.label(),
        "one_thread": one_thread.label(),
        "searched_rounds_ms": theirs,
        "one_thread_rounds_ms": ours,
        "searched_ms": searched_ms,
        "one_thread_ms": one_thread_ms,
        "kept": "one_thread" if one_thread_ms < searched_ms else "searched",
    }


def chosen_in_trace(trace: list[dict[str, Any]], kept: SessionSettings) -> list[dict[str, Any]]:
    """The settings search's trace with `kept` marked as chosen (the search's own choice no longer is): what the
    report reads as the search's timing of the model's settings."""
    return [{**entry, "chosen": entry["label"] == kept.label()} for entry in trace]
