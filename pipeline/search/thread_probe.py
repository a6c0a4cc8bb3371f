"""Which thread count the prune stage times its candidates at, measured before its searches.

On the Zen 4 EPYC of BENCHMARKS.md ("Two threads at two speeds") sessions of one thread held their speed within 1%
for minutes, while sessions of two threads ran at two speeds up to 2x apart, in stretches of a second to a minute,
every model switching together. A candidate's settings are searched in a burst of a second or two, so a two-thread
timing is one of the two speeds: the search could call a network within the budget at the fast one that the bench,
timing it over its rounds, then keeps at one thread and over the budget; and the timings taken again waited for a
speed to come back (13 of 13 configurations stayed over the limit, 520 s of waits in a 2,355-s stage, some at the
slow two-thread speed through all four rounds), which a one-thread timing that holds would not need.

So, with a budget and prune.target_threads null on this machine's CPU, the stage first times the student in its
deployed form in rounds spread over prune.thread_probe_s: at one thread, and at every core with spinning on and
off, each round in fresh sessions as the search times a candidate. A setting holds when its slowest round is within
HOLDS of its fastest. Where one thread holds and a several-thread setting does not, the stage times every candidate
at one thread (prune.target_threads 1) and takes no timing again (prune.retime_rounds 0: the wait is for a speed to
come back, and one thread did not change). A network within the budget at one thread is within it at what the bench
ships: the bench keeps a several-thread setting only where it ran faster than one thread over its rounds
(pipeline/runtime/one_thread_rival.py). Otherwise (both hold, or one thread moves too, as on the Xeon of "A host at
two speeds"), candidates keep their own tuned settings and the timings taken again. The probe is kept in the work
directory's checkpoints: a resumed run decides with the thread count its searches were made at.

Whether one thread holds is measured each run, not assumed: on a new VM of the same Zen 4 model one thread moved
too (4 of the probe's 10 rounds up to 1.5x slower), and the probe kept the tuned settings (BENCHMARKS.md, "The
thread probe on a noisy day").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cache import CHECKPOINTS
from pipeline.runtime import environment, targets, tuning
from pipeline.runtime.sessions import SessionSettings
from pipeline.search import prune_budget, prune_candidates
from pipeline.training import distributed

log = logging.getLogger(__name__)

SAVED = "thread-probe.json"  # in the work directory's checkpoints
HOLDS = 1.10  # a setting holds when its slowest round is at most 10% slower than its fastest
GAP_S = 5.0  # between rounds: the two speeds came in stretches of a second to a minute
ONE = "1 thread"  # the label of SessionSettings(1), what prune.target_threads 1 times at


def settings_probed(cores: int) -> dict[str, SessionSettings]:
    """One thread, and every core spinning on and off (both ran at two speeds on the Zen 4 EPYC)."""
    several = {f"{cores} threads, spinning {'on' if s else 'off'}": SessionSettings(cores, s) for s in (True, False)}
    return {ONE: SessionSettings(1), **several}


def applies(params: Any, cores: int) -> bool:
    """With a budget, its thread count not fixed, on this machine's CPU, with several cores: what there is to probe."""
    return (
        prune_budget.has_budget(params)
        and params.thread_probe_s > 0
        and params.target_threads is None
        and params.target_provider == "cpu"
        and params.target_device == targets.LOCAL
        and cores > 1
    )


def probe(
    time_one: Callable[[SessionSettings], float],
    settings: dict[str, SessionSettings],
    seconds: float,
    gap_s: float = GAP_S,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Rounds of `time_one(settings)` (a p50 in ms) over every setting, `gap_s` apart, until `seconds` have passed
    (two rounds at least), and what they say: each setting's fastest and slowest round, whether it holds, and
    whether candidates are timed at one thread ("one_thread")."""
    started, rounds = monotonic(), []
    while len(rounds) < 2 or monotonic() - started < seconds:
        if rounds:
            sleep(gap_s)
        rounds.append({"t_s": round(monotonic() - started, 1), **{label: time_one(s) for label, s in settings.items()}})
    spread = {}
    for label in settings:
        timed = [row[label] for row in rounds]
        spread[label] = {"fastest_ms": min(timed), "slowest_ms": max(timed), "holds": max(timed) <= HOLDS * min(timed)}
    one_thread = spread[ONE]["holds"] and not all(spread[label]["holds"] for label in settings if label != ONE)
    return {
        "seconds": seconds,
        "gap_s": gap_s,
        "holds": HOLDS,
        "rounds": rounds,
        "spread": spread,
        "one_thread": one_thread,
    }


def measured(measure: prune_candidates.Candidates, params: Any) -> dict[str, Any]:
    """probe() on the measurer's student in the last form prune.target_format measures (int8 where it may ship),
    each timing a fresh session at the search's presets."""
    form = prune_candidates.FORMATS[params.target_format][-1]
    path = measure.export(measure.student)["paths"][form]

    def time_one(settings: SessionSettings) -> float:
        return p50_at(path, measure.feed, params.target_batch, settings)

    found = probe(time_one, settings_probed(environment.cores()), params.thread_probe_s)
    return {**found, "form": form, "asked": asked(params)}


def p50_at(path: Path, feed: dict, batch: int, settings: SessionSettings) -> float:
    """The file's p50 in a fresh session at `settings`, as the prune search times a candidate at fixed settings."""
    timing = prune_candidates.SEARCH_TIMING  # read here: the tests shorten the search's presets
    _, p50, _ = tuning.tune(path, "cpu", feed, batch, [settings], *timing)
    return p50


def asked(params: Any) -> dict[str, Any]:
    """The settings the probe replaces, as the config asked for them."""
    return {"target_threads": params.target_threads, "retime_rounds": params.retime_rounds}


def applied(params: Any, student, spec, dataset, out_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """The prune stage's params for its searches, and the probe (None where it does not apply). Under torchrun the
    leader probes (ranks timing at once would slow each other) and tells the rest."""
    if not applies(params, environment.cores()):
        return params, None
    saved = out_dir / CHECKPOINTS / SAVED
    leader = distributed.is_leader()

    def measure_now() -> dict[str, Any]:
        measure = prune_budget.candidates(student, spec, dataset, params)
        try:
            return measured(measure, params)
        finally:
            measure.close()

    found = prune_budget.kept_json(saved, measure_now) if leader else None
    found = distributed.broadcast_json(found)
    log.info("prune: %s", summary(found).removesuffix("; "))
    return resolved(params, found), found


def resolved(params: Any, found: dict[str, Any] | None) -> Any:
    """`params` with candidates at one thread and no timing taken again where the probe found that; else as given."""
    if found is None or not found["one_thread"]:
        return params
    return dataclasses.replace(params, target_threads=1, retime_rounds=0)


def as_asked(params: Any, found: dict[str, Any] | None) -> Any:
    """`params` with the probe's settings as the config asked (the teacher is timed at its own, as the bench does)."""
    return params if found is None else dataclasses.replace(params, **found["asked"])


def text(found: dict[str, Any] | None) -> str:
    """The probe in a sentence: what each setting did, and what the searches were timed at ('' without one)."""
    if found is None:
        return ""
    settings = "; ".join(
        f"{label} {s['fastest_ms']:.4f}–{s['slowest_ms']:.4f} ms ({'held' if s['holds'] else 'moved'})"
        for label, s in found["spread"].items()
    )
    outcome = (
        "so candidates were timed at one thread, and no timing was taken again"
        if found["one_thread"]
        else "so candidates were timed at their own tuned settings"
    )
    return (
        f"Before the searches the student ({found['form']}) was timed in {len(found['rounds'])} rounds over "
        f"{found['seconds']:g} s: {settings}; a setting holds when its slowest round is within "
        f"{found['holds'] - 1:.0%} of its fastest, {outcome}."
    )


def summary(found: dict[str, Any] | None) -> str:
    if found is None:
        return ""
    one = found["spread"][ONE]
    several = [s for label, s in found["spread"].items() if label != ONE]
    return (
        f"thread probe: 1 thread {one['fastest_ms']:.4f}–{one['slowest_ms']:.4f} ms, several "
        f"{min(s['fastest_ms'] for s in several):.4f}–{max(s['slowest_ms'] for s in several):.4f} ms: candidates at "
        f"{'one thread' if found['one_thread'] else 'their tuned settings'}; "
    )
