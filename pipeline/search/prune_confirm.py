"""When a search met its budget: whether a configuration it would have preferred, measured over the limit, meets it
when timed again beside the chosen one in interleaved rounds. Pure: measuring is the caller's job.

A candidate's repeats (prune.search_repeats) are timed back to back, so a burst of a few seconds can push all but one
of them over the limit, and a search that decides on each candidate's median then prunes more than the budget needs.
Seen on CIFAR-10 (BENCHMARKS.md, "Depth chosen by the prune stage"): resnet8_s2 without block 1, unpruned, measured
0.0357, 0.0579 and 0.0548 ms against a 0.0419 ms limit (the same architecture measured 0.0356 ms in the run before);
the per-layer search went on to remove 46% of its channels, and the model measured 0.0264 ms after its fine-tune.

Rivals: the configurations measured over the limit that the search's own preference would have taken over the chosen
one (the least pruned, or for the sampled search the best-scoring), whose fastest repeat was within the limit (one
with no repeat under it is over it as far as this machine can tell). The rivals and the chosen one are timed again
in ROUNDS interleaved rounds, where drift hits them alike; of those whose median over the rounds meets the limit, the
preferred one ships. The chosen one stays when no rival meets it, even if it missed in the rounds itself: the rounds
can only undo a burst's over-pruning, not prune more.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from pipeline.search.prune_plateau import (
    MAX_CONTENDERS,
    ROUNDS,
    Entry,
    Retime,
    best_run,
    interleaved,
    setting,
    setting_key,
    shipping,
)


def rivals(decision: dict[str, Any], prefer: Callable[[list[Entry]], Entry]) -> tuple[Entry, list[Entry]]:
    """(The chosen configuration's trace entry, the distinct rivals: the module's docstring), the least pruned first,
    at most MAX_CONTENDERS - 1 of them."""
    chosen_key = setting_key(decision)
    trace = decision["trace"]
    chosen = next(e for e in trace if setting_key(e) == chosen_key)
    seen, found = {chosen_key}, []
    for entry in sorted(trace, key=lambda e: e["ratio"]):
        key = setting_key(entry)
        if key in seen or entry["meets_limit"] or best_run(entry) > decision["limit_ms"]:
            continue
        if prefer([chosen, entry]) is entry:
            seen.add(key)
            found.append(entry)
    return chosen, found[: MAX_CONTENDERS - 1]


def confirmed(decision: dict[str, Any], retime: Retime, prefer: Callable[[list[Entry]], Entry]) -> dict[str, Any]:
    """A search's decision that met its limit, with its rivals timed again (the record under "confirmed"), and the
    preferred of those that met the limit in the rounds shipping instead. Unchanged where the search ran out of
    time (prune.search_budget_s bounds it) or had no rival."""
    if decision["out_of_time"]:
        return decision
    chosen, found = rivals(decision, prefer)
    if not found:
        return decision
    started = time.monotonic()
    entries = [chosen, *found]
    times = interleaved(entries, retime, ROUNDS)
    medians = [statistics.median(runs) for runs in times]
    limit = decision["limit_ms"]
    meeting = [entry for entry, median in zip(entries, medians, strict=True) if median <= limit]
    pick = prefer(meeting) if meeting else chosen
    picked = next(i for i, entry in enumerate(entries) if entry is pick)
    record = {
        "rounds": ROUNDS,
        "searched_ratio": chosen["ratio"],
        "chosen_ratio": pick["ratio"],
        "entries": [
            {
                "ratio": entry["ratio"],
                "setting": setting(entry),
                "first_runs_ms": entry.get("latency_runs_ms") or [entry["latency_ms"]],
                "runs_ms": runs,
                "median_ms": median,
                "meets_limit": median <= limit,
            }
            for entry, runs, median in zip(entries, times, medians, strict=True)
        ],
        "seconds": time.monotonic() - started,
    }
    if pick is chosen:
        return {**decision, "confirmed": record}
    first = ", ".join(f"{ms:.4g}" for ms in record["entries"][picked]["first_runs_ms"])
    record["message"] = (
        f"{pick['ratio']:.1%} of channels removed met the {limit:.4g} ms limit in {ROUNDS} interleaved rounds "
        f"({medians[picked]:.4g} ms; its first repeats {first}), so it is used instead of the {chosen['ratio']:.1%} "
        "the search chose"
    )
    return {**decision, **shipping(pick, medians[picked]), "confirmed": record}
