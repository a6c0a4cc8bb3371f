"""Per-layer pruning to a latency budget, from a measured latency table. Pure: measuring is the caller's job.

`search_layers` takes the prunable groups (each with its candidate channel counts and its channels' importance),
a latency table (group -> channel count -> latency of the model with only that group at that count) and a
`measure(channels) -> {"latency_ms": ..., ...}` function, and returns a JSON-serialisable decision.

Method (HALP's latency table, NetAdapt's greedy steps against measured latency):

1. Predict a configuration's latency from the table (LATENCY_MODELS): `additive` (HALP) takes the full model's plus,
   for each group, its table latency at its count minus its latency at full width; `multiplicative` takes the full
   model's times, for each group, the share of it left at its count. A conv between two thinned groups loses MACs
   in proportion to the product of their shares, which the additive model counts twice as savings: on CIFAR-10's
   resnet8 (AVX2) it predicted 0.02-0.11 ms too little, the multiplicative one 0.005 ms too little to 0.04 ms too
   much (BENCHMARKS.md).
2. From the full model, repeatedly take the cheapest step: a step moves one group to its next candidate count that
   is faster in the table than its current one (a count that is not faster, where the table is not monotone, is
   stepped over, so it never looks free). Its cost is what it loses per millisecond the table says it saves: the
   importance of the channels it removes (magnitude_cost), or the validation accuracy the pruned configuration
   loses before any fine-tune (pipeline/search/prune_scores.py). Stop when the prediction is <= budget * (1 -
   margin).
3. Measure that configuration. The model is only a model: if the measurement misses the limit, carry its
   error (measured - predicted) forward, continue the greedy steps from there to a prediction that much lower, and
   measure again, until one meets the limit, no step is left, or `time_budget_s` is spent. If the first one measured
   met the limit with room to spare (the model predicted too much), carry that error back along the path the same
   way, until one misses.
4. The steps taken form a path from the full model. If a less pruned configuration missed and a more pruned one
   met, bisect the path between them `refine` times: a large error (one slow measurement, or groups whose latencies
   do not add up) can carry the steps far past what the budget needs.
5. The decision is the least pruned configuration that met the limit; if none did, the fastest measured one,
   marked not met with a one-line message naming the closest latency.

Channel counts are candidate counts only (multiples of the step that prune.round_to sets), so the kernels' widths
are respected by construction.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from pipeline.search.prune_ratio import search_limit

DEFAULT_STEP = 8  # with prune.round_to 0: CPU kernels are vectorized over 8 or 16 channels (BENCHMARKS.md)
FLOOR_FRACTION = 8  # no group is pruned below 1/8 of its channels (nor below one step)

Table = dict[str, dict[int, float]]  # group -> channel count -> p50 ms with only that group at that count
Channels = dict[str, int]  # group -> channel count kept
Measure = Callable[[Channels], dict[str, Any]]
# (group, channels now, the group's next count, ms that step saves) -> what the step costs; the cheapest is taken
StepCost = Callable[["Group", Channels, int, float], Any]


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


def predict_additive(groups: list[Group], table: Table, channels: Channels) -> float:
    """The additive model: the full model's latency plus each group's delta at its count."""
    full = table[groups[0].name][groups[0].channels] if groups else 0.0
    return full + sum(table[g.name][channels[g.name]] - table[g.name][g.channels] for g in groups)


def predict_multiplicative(groups: list[Group], table: Table, channels: Channels) -> float:
    """The multiplicative model: the full model's latency times each group's share of it left at its count."""
    full = table[groups[0].name][groups[0].channels] if groups else 0.0
    return full * math.prod(table[g.name][channels[g.name]] / table[g.name][g.channels] for g in groups)


LatencyModel = Callable[[list["Group"], Table, Channels], float]
LATENCY_MODELS: dict[str, LatencyModel] = {"additive": predict_additive, "multiplicative": predict_multiplicative}


def next_step(group: Group, table: Table, kept: int) -> tuple[int, float] | None:
    """(count, ms saved) of the group's next candidate count faster than `kept` in the table; None when no count
    below is faster."""
    latency = table[group.name]
    for count in group.counts[group.counts.index(kept) + 1 :]:
        saved = latency[kept] - latency[count]
        if saved > 0:
            return count, saved
    return None


def magnitude_cost(group: Group, channels: Channels, count: int, saved: float) -> float:
    """The importance of the channels a step removes, per ms it saves (`prune.search_score: magnitude`)."""
    return group.lost(channels[group.name], count) / saved


def greedy_step(groups: list[Group], table: Table, channels: Channels, cost: StepCost) -> Channels | None:
    """`channels` after the cheapest step by `cost`; None when no group has a faster count left."""
    steps = []
    for group in groups:
        found = next_step(group, table, channels[group.name])
        if found is not None:
            count, saved = found
            steps.append((cost(group, channels, count, saved), group.name, count))
    if not steps:
        return None
    _, name, count = min(steps)
    return {**channels, name: count}


def greedy(
    groups: list[Group],
    table: Table,
    channels: Channels,
    target_ms: float,
    cost: StepCost = magnitude_cost,
    model: LatencyModel = predict_additive,
) -> Channels:
    """Take the cheapest steps by `cost` from `channels` until the prediction is <= target_ms or no step is left."""
    path = GreedyPath(groups, table, cost, channels, model)
    return path.steps[path.reach(target_ms)]


class GreedyPath:
    """The configurations the greedy steps pass through from `start` (the full model), each one step further,
    extended only as far as asked (with the validation cost every step is scored)."""

    def __init__(
        self,
        groups: list[Group],
        table: Table,
        cost: StepCost,
        start: Channels | None = None,
        model: LatencyModel = predict_additive,
    ):
        self.groups, self.table, self.cost, self.model = groups, table, cost, model
        self.steps: list[Channels] = [dict(start or full_channels(groups))]
        self.ended = False

    def reach(self, target_ms: float) -> int:
        """The index of the first configuration predicted <= target_ms (or the last one, when the steps end)."""
        index = 0
        while self.model(self.groups, self.table, self.steps[index]) > target_ms and self.extend(index + 1):
            index += 1
        return index

    def extend(self, index: int) -> bool:
        """Whether configuration `index` exists, taking the steps up to it."""
        while len(self.steps) <= index and not self.ended:
            stepped = greedy_step(self.groups, self.table, self.steps[-1], self.cost)
            if stepped is None:
                self.ended = True
            else:
                self.steps.append(stepped)
        return index < len(self.steps)


def search_layers(
    groups: list[Group],
    table: Table,
    measure: Measure,
    budget_ms: float,
    margin: float,
    time_budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    cost: StepCost = magnitude_cost,
    refine: int = 0,
    model: LatencyModel = predict_additive,
) -> dict[str, Any]:
    """The least pruned configuration found whose measured latency is <= budget_ms * (1 - margin), taking the
    cheapest steps by `cost`, predicting latency by `model`; see the module docstring."""
    limit = search_limit(budget_ms, margin)
    started = clock()
    full = full_channels(groups)
    path = GreedyPath(groups, table, cost, model=model)
    trace: list[dict[str, Any]] = []
    out_of_time = False

    def run(index: int) -> bool:
        """Measure the path's configuration `index`; False when the time budget is spent (the first always runs)."""
        nonlocal out_of_time
        if trace and clock() - started >= time_budget_s:
            out_of_time = True
            return False
        channels = path.steps[index]
        entry = {"channels": dict(channels), "step": index, "ratio": share_removed(full, channels)}
        result = measure(channels)
        trace.append({**entry, "model_ms": model(groups, table, channels), **result})
        trace[-1]["meets_limit"] = result["latency_ms"] <= limit
        return True

    index = path.reach(limit)
    while run(index) and not trace[-1]["meets_limit"]:
        error = trace[-1]["latency_ms"] - trace[-1]["model_ms"]
        further = max(path.reach(limit - error), index + 1)  # the model's error carried: at least one step on
        if not path.extend(further):
            break  # no step left: nothing new to measure
        index = further
    # A model that predicts too much leaves the first configuration that met further pruned than the budget needs:
    # carry its error back along the path (to a prediction that much higher) until one misses.
    while trace and all(e["meets_limit"] for e in trace):
        error = trace[-1]["latency_ms"] - trace[-1]["model_ms"]
        back = path.reach(limit - error)
        if back >= index or not run(back):
            break
        index = back
    # A big miss carries a big error, and one slow measurement can send the steps far past the budget: bisect the
    # path between the last configuration that missed and the first that met, as the uniform search does.
    met = [e["step"] for e in trace if e["meets_limit"]]
    missed = [e["step"] for e in trace if not e["meets_limit"] and met and e["step"] < min(met)]
    low, high = (max(missed), min(met)) if missed and met else (0, 0)
    for _ in range(refine):
        middle = (low + high) // 2
        if middle == low or not run(middle):
            break
        low, high = (low, middle) if trace[-1]["meets_limit"] else (middle, high)
    return decide(groups, table, trace, budget_ms, margin, out_of_time, clock() - started, least_pruned)


def least_pruned(met: list[dict[str, Any]]) -> dict[str, Any]:
    """The greedy search keeps the configuration fewest steps from the full model."""
    return min(met, key=lambda e: e["step"])


def decide(
    groups: list[Group],
    table: Table,
    trace: list[dict[str, Any]],
    budget_ms: float,
    margin: float,
    out_of_time: bool,
    seconds: float,
    best: Callable[[list[dict[str, Any]]], dict[str, Any]],
    search: str = "per_layer",
) -> dict[str, Any]:
    """The decision: `best` of the measured configurations that met the limit; if none did, the fastest measured,
    marked not met with a one-line message naming the closest latency."""
    limit = search_limit(budget_ms, margin)
    met = [e for e in trace if e["meets_limit"]]
    chosen = best(met) if met else min(trace, key=lambda e: (e["latency_ms"], e["ratio"]))
    decision = {
        "search": search,
        "ratio": chosen["ratio"],
        "channels": chosen["channels"],
        "full_channels": full_channels(groups),
        "met": bool(met),
        "budget_ms": budget_ms,
        "margin": margin,
        "limit_ms": limit,
        "model_ms": chosen["model_ms"],  # the latency model's prediction
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
            f"{search.replace('_', '-')} search: {why}; the closest measured is {chosen['latency_ms']:.4g} ms "
            f"({chosen['ratio']:.1%} of channels removed)"
        )
    return decision
