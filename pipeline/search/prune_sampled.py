"""Per-layer pruning to a latency budget by ranking whole configurations on validation (`prune.search: sampled`).
Pure: measuring and scoring are the caller's.

Why: the greedy per-layer search (prune_layers.py) takes one step at a time by a local cost, and on CIFAR-10 neither
cost it knows led it to a configuration as accurate as the uniform ratio's at the same budget (BENCHMARKS.md).
Scored on validation after re-estimating BatchNorm (prune_scores.py), whole configurations did rank as their
fine-tuned accuracies did; single steps did not. EagleEye (Li et al. 2020) ranks sampled whole configurations this
way; this does it against measured latency, with the greedy per-layer search's table and latency models:

1. Paths from the full model, each one table step at a time (prune_layers.GreedyPath): `even` thins the group with
   the largest share of its channels left (close to a uniform ratio), `magnitude` takes the greedy search's steps,
   and `samples` random paths each thin a group drawn at random (seeded per path).
2. At a target (first the limit, budget * (1 - margin)) every path stops at its first configuration predicted at or
   under it; each distinct configuration is scored on validation, and the best-scoring one not measured yet is
   measured.
3. A miss carries the latency model's error, as the greedy search does: the next target is the limit minus
   (measured - predicted), and step 2 repeats, until a configuration meets the limit, none is left, or
   `time_budget_s` is spent (checked before each target; the first always runs). A first meet with room to spare
   (the model predicted too much) carries its error up the same way, to a higher target, until one misses.
4. Between the highest target that met and the lowest above it that missed, the target is bisected `refine` times:
   one slow measurement carries a large error. At each middle target its best-scoring configuration is measured
   (or its measurement reused).
5. The decision is the best-scoring configuration that met the limit (prune_layers.decide); every target's scored
   configurations are kept in `rounds`, so the report shows how much the choice mattered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.search.prune_layers import (
    Channels,
    GreedyPath,
    Group,
    LatencyModel,
    Measure,
    Table,
    decide,
    full_channels,
    magnitude_cost,
    predict_additive,
    share_removed,
)
from pipeline.search.prune_ratio import search_limit

log = logging.getLogger(__name__)

Score = Callable[[Channels], dict[str, float]]  # configuration -> {"accuracy", "loss"} on validation


def even_cost(group: Group, channels: Channels, count: int, saved: float) -> float:
    """prune_layers.StepCost of the `even` path: the group with the largest share of its channels left goes first."""
    return -channels[group.name] / group.channels


def random_cost(rng: np.random.Generator) -> Callable[[Group, Channels, int, float], float]:
    """prune_layers.StepCost of a random path: every group with a faster count left is as likely to be thinned."""
    return lambda group, channels, count, saved: float(rng.random())


def sample_paths(
    groups: list[Group], table: Table, samples: int, seed: int, model: LatencyModel = predict_additive
) -> dict[str, GreedyPath]:
    """The named paths: even, magnitude, then `samples` random ones, each with its own generator, so a path's steps
    do not depend on how far the others were extended."""
    costs = {"even": even_cost, "magnitude": magnitude_cost}
    costs |= {f"random {k}": random_cost(np.random.default_rng([seed, k])) for k in range(1, samples + 1)}
    return {name: GreedyPath(groups, table, cost, model=model) for name, cost in costs.items()}


def ranking(validation: dict[str, float]) -> tuple[float, float]:
    """Best first: higher validation accuracy, then lower cross-entropy (many configurations tie on accuracy)."""
    return -validation["accuracy"], validation["loss"]


def configuration(channels: Channels) -> tuple[tuple[str, int], ...]:
    """A configuration as a dictionary key."""
    return tuple(sorted(channels.items()))


def scored_pool(paths: dict[str, GreedyPath], score: Score, target_ms: float) -> list[dict[str, Any]]:
    """Each distinct configuration the paths stop at for `target_ms`, with the paths that reach it, the latency
    model's prediction and its validation score; best-scoring first."""
    pool: dict[tuple, dict[str, Any]] = {}
    for name, path in paths.items():
        channels = path.steps[path.reach(target_ms)]
        key = configuration(channels)
        if key in pool:
            pool[key]["paths"].append(name)
            continue
        predicted, validation = path.model(path.groups, path.table, channels), score(channels)
        pool[key] = {"paths": [name], "channels": dict(channels), "model_ms": predicted, "validation": validation}
    return sorted(pool.values(), key=lambda entry: ranking(entry["validation"]))


def search_sampled(
    groups: list[Group],
    table: Table,
    measure: Measure,
    score: Score,
    budget_ms: float,
    margin: float,
    time_budget_s: float,
    samples: int,
    seed: int,
    refine: int = 0,
    clock: Callable[[], float] = time.monotonic,
    model: LatencyModel = predict_additive,
) -> dict[str, Any]:
    """The best-scoring configuration found whose measured latency is <= budget_ms * (1 - margin); see the module
    docstring."""
    limit = search_limit(budget_ms, margin)
    started = clock()
    full = full_channels(groups)
    paths = sample_paths(groups, table, samples, seed, model)
    trace: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    out_of_time = False

    def run(target_ms: float, fresh_only: bool) -> bool | None:
        """Whether the best-scoring configuration at `target_ms` meets the limit, measuring it unless it was (with
        `fresh_only`, the best not measured yet); None when none is left or the time budget is spent."""
        nonlocal out_of_time
        if trace and clock() - started >= time_budget_s:
            out_of_time = True
            return None
        pool = scored_pool(paths, score, target_ms)
        rounds.append({"target_ms": target_ms, "configurations": pool})
        known = {configuration(e["channels"]): e for e in trace}
        if not fresh_only and configuration(pool[0]["channels"]) in known:
            return known[configuration(pool[0]["channels"])]["meets_limit"]
        fresh = [e for e in pool if configuration(e["channels"]) not in known]
        if not fresh:
            return None
        best = fresh[0]
        result = measure(best["channels"])
        ratio = share_removed(full, best["channels"])
        trace.append({**best, "target_ms": target_ms, "ratio": ratio, **result})
        trace[-1]["meets_limit"] = result["latency_ms"] <= limit
        log.info(
            "prune: sampled search at %.4f ms: %d configurations scored, best validation %.4f (%s) measured %.4f ms",
            target_ms, len(pool), best["validation"]["accuracy"], " ".join(best["paths"]), result["latency_ms"],
        )  # fmt: skip
        return trace[-1]["meets_limit"]

    target = limit
    while run(target, fresh_only=True) is False:
        error = trace[-1]["latency_ms"] - trace[-1]["model_ms"]
        # The model's error carried (the same target when a path had ended); not below 0 ms, where every path is at
        # its floor already.
        target = max(0.0, min(limit - error, target))
    # A model that predicts too much leaves the first configuration that met further pruned than the budget needs:
    # carry its error up to a higher target, until one misses.
    while trace and all(e["meets_limit"] for e in trace):
        higher = limit - (trace[-1]["latency_ms"] - trace[-1]["model_ms"])
        if higher <= target or run(higher, fresh_only=False) is None:
            break
        target = higher
    met = [e["target_ms"] for e in trace if e["meets_limit"]]
    missed = [e["target_ms"] for e in trace if not e["meets_limit"] and met and e["target_ms"] > max(met)]
    if met and missed:
        low, high = max(met), min(missed)
        for _ in range(refine):
            middle = (low + high) / 2
            met_middle = run(middle, fresh_only=False)
            if met_middle is None:
                break
            low, high = (middle, high) if met_middle else (low, middle)
    decision = decide(groups, table, trace, budget_ms, margin, out_of_time, clock() - started, best_scored, "sampled")
    return {**decision, "validation": decision_validation(decision), "samples": samples, "rounds": rounds}


def best_scored(met: list[dict[str, Any]]) -> dict[str, Any]:
    """The sampled search keeps the best-scoring configuration that met the limit."""
    return min(met, key=lambda e: ranking(e["validation"]))


def decision_validation(decision: dict[str, Any]) -> dict[str, float]:
    """The chosen configuration's validation score, from the trace entry it was chosen from."""
    chosen = next(e for e in decision["trace"] if e["channels"] == decision["channels"])
    return chosen["validation"]
