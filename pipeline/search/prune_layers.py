"""Per-layer pruning to a latency budget, from a measured latency table. Pure: measuring is the caller's job.

`search_layers` takes the prunable groups (each with its candidate channel counts and its channels' importance),
a latency table (group -> channel count -> latency of the model with only that group at that count) and a
`measure(channels) -> {"latency_ms": ..., ...}` function, and returns a JSON-serialisable decision.

Method (HALP's additive latency model, NetAdapt's greedy steps against measured latency):

1. Predict a configuration's latency as the full model's plus, for each group, its table latency at its count
   minus its latency at full width.
2. From the full model, repeatedly take the step with the least importance lost per millisecond the table says it
   saves: a step moves one group to its next candidate count that is faster in the table than its current one (a
   count that is not faster, where the table is not monotone, is stepped over, so it never looks free), losing the
   importance of the channels it removes. Stop when the prediction is <= budget * (1 - margin).
3. Measure that configuration. The additive model is only a model: if the measurement misses the limit, carry its
   error (measured - predicted) forward, continue the greedy steps from there to a prediction that much lower, and
   measure again, until one meets the limit, no step is left, or `time_budget_s` is spent.
4. The decision is the configuration that met the limit; if none did, the fastest measured one, marked not met
   with a one-line message naming the closest latency.

Channel counts are candidate counts only (multiples of the step that prune.round_to sets), so the kernels' widths
are respected by construction.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

DEFAULT_STEP = 8  # with prune.round_to 0: CPU kernels are vectorized over 8 or 16 channels (BENCHMARKS.md)
FLOOR_FRACTION = 8  # no group is pruned below 1/8 of its channels (nor below one step)

Table = dict[str, dict[int, float]]  # group -> channel count -> p50 ms with only that group at that count
Channels = dict[str, int]  # group -> channel count kept
Measure = Callable[[Channels], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Group:
    name: str  # the group's root module in the student, e.g. "features.0.0"
    counts: tuple[int, ...]  # candidate channel counts, the full count first, descending to the floor
    scores: tuple[float, ...]  # its channels' normalized importance, ascending: the first are the first to go

    @property
    def channels(self) -> int:
        return self.counts[0]

    def lost(self, kept_before: int, kept_after: int) -> float:
        """The importance of the channels that go when the count drops from `kept_before` to `kept_after`."""
        return sum(self.scores[self.channels - kept_before : self.channels - kept_after])


def candidate_counts(channels: int, round_to: int) -> tuple[int, ...]:
    """The full count, then the multiples of the step (round_to, or DEFAULT_STEP) below it down to the floor."""
    step = round_to or DEFAULT_STEP
    floor = max(step, math.ceil(channels / FLOOR_FRACTION / step) * step)
    return (channels, *range((channels - 1) // step * step, floor - 1, -step))


def full_channels(groups: list[Group]) -> Channels:
    return {g.name: g.channels for g in groups}


def share_removed(full: Channels, channels: Channels) -> float:
    """The overall share of the groups' channels removed: what `ratio` means for a per-layer configuration."""
    total = sum(full.values())
    return round(1 - sum(channels[name] for name in full) / total, 6) if total else 0.0


def predict(groups: list[Group], table: Table, channels: Channels) -> float:
    """The additive model: the full model's latency plus each group's delta at its count."""
    full = table[groups[0].name][groups[0].channels] if groups else 0.0
    return full + sum(table[g.name][channels[g.name]] - table[g.name][g.channels] for g in groups)


def next_step(group: Group, table: Table, kept: int) -> tuple[float, int] | None:
    """(importance lost per ms saved, the count) of the group's next candidate count faster than `kept` in the
    table; None when no count below is faster."""
    latency = table[group.name]
    for count in group.counts[group.counts.index(kept) + 1 :]:
        saved = latency[kept] - latency[count]
        if saved > 0:
            return group.lost(kept, count) / saved, count
    return None


def greedy(groups: list[Group], table: Table, channels: Channels, target_ms: float) -> Channels:
    """Take the cheapest steps from `channels` until the prediction is <= target_ms or no step is left."""
    channels = dict(channels)
    while predict(groups, table, channels) > target_ms:
        steps = [(step, g.name) for g in groups if (step := next_step(g, table, channels[g.name])) is not None]
        if not steps:
            break
        (_, count), name = min(steps)
        channels[name] = count
    return channels


def search_layers(
    groups: list[Group],
    table: Table,
    measure: Measure,
    budget_ms: float,
    margin: float,
    time_budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The least pruned configuration found whose measured latency is <= budget_ms * (1 - margin); see the module
    docstring."""
    limit = budget_ms * (1 - margin)
    started = clock()
    full = full_channels(groups)
    channels, error, trace, out_of_time = full, 0.0, [], False
    while True:
        channels = greedy(groups, table, channels, limit - error)
        if trace and channels == trace[-1]["channels"]:
            break  # no step left: nothing new to measure
        if trace and clock() - started >= time_budget_s:  # the first configuration always runs
            out_of_time = True
            break
        predicted = predict(groups, table, channels)
        result = measure(channels)
        entry = {"channels": dict(channels), "ratio": share_removed(full, channels), "additive_ms": predicted}
        trace.append({**entry, **result, "meets_limit": result["latency_ms"] <= limit})
        if trace[-1]["meets_limit"]:
            break
        error = result["latency_ms"] - predicted
    return decide(groups, table, trace, budget_ms, margin, out_of_time, clock() - started)


def decide(
    groups: list[Group],
    table: Table,
    trace: list[dict[str, Any]],
    budget_ms: float,
    margin: float,
    out_of_time: bool,
    seconds: float,
) -> dict[str, Any]:
    limit = budget_ms * (1 - margin)
    met = [e for e in trace if e["meets_limit"]]
    chosen = met[0] if met else min(trace, key=lambda e: (e["latency_ms"], e["ratio"]))
    decision = {
        "search": "per_layer",
        "ratio": chosen["ratio"],
        "channels": chosen["channels"],
        "full_channels": full_channels(groups),
        "met": bool(met),
        "budget_ms": budget_ms,
        "margin": margin,
        "limit_ms": limit,
        "additive_ms": chosen["additive_ms"],
        "predicted_ms": chosen["latency_ms"],  # as the uniform search's: the candidate measured before fine-tuning
        "out_of_time": out_of_time,
        "seconds": seconds,
        "table": {g.name: {str(count): table[g.name][count] for count in g.counts} for g in groups},
        "trace": trace,
    }
    if not met:
        why = (
            "prune.search_budget_s ran out first"
            if out_of_time
            else "even the fastest configuration the table offers misses it"
        )
        decision["message"] = (
            f"latency budget {budget_ms:g} ms (limit {limit:.4g} ms with margin {margin:g}) not reached by the "
            f"per-layer search: {why}; the closest measured is {chosen['latency_ms']:.4g} ms "
            f"({chosen['ratio']:.1%} of channels removed), which is used"
        )
    return decision
