"""The prune stage's thread probe: one thread against several, timed in rounds before the searches
(pipeline/search/thread_probe.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.cache import CHECKPOINTS
from pipeline.runtime import environment
from pipeline.runtime.sessions import SessionSettings
from pipeline.search import prune_candidates, thread_probe
from stages.prune import Params
from tests.pipeline.search.test_prune_candidates import candidates_for

SETTINGS = thread_probe.settings_probed(2)


class Clock:
    """A monotonic clock that one second passes on per timing, and `sleep` moves on."""

    def __init__(self):
        self.now, self.waits = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def timings(by_threads: dict[int, list[float]], clock: Clock):
    """A time_one giving each thread count's latencies in turn (spinning on and off alike)."""
    left = {threads: {True: iter(ms), False: iter(ms)} for threads, ms in by_threads.items()}

    def time_one(settings: SessionSettings) -> float:
        clock.now += 1.0
        return next(left[settings.threads][settings.spinning])

    return time_one


def probed(by_threads: dict[int, list[float]], seconds: float) -> tuple[dict, Clock]:
    clock = Clock()
    found = thread_probe.probe(
        timings(by_threads, clock), SETTINGS, seconds, gap_s=5.0, monotonic=clock.monotonic, sleep=clock.sleep
    )
    return found, clock


def test_one_thread_holding_where_two_threads_run_at_two_speeds_times_the_candidates_at_one_thread():
    """The Zen 4 EPYC's int8 edge model: 0.0489-0.0494 ms at one thread, 0.048 or 0.098 at two."""
    one = [0.0491, 0.0489, 0.0494, 0.0490]
    two = [0.0478, 0.0978, 0.0976, 0.0480]
    found, clock = probed({1: one, 2: two}, seconds=20.0)
    assert len(found["rounds"]) == 4 and clock.waits == [5.0] * 3  # rounds until 20 s had passed, 5 s apart
    assert found["rounds"][1] == {
        "t_s": 8.0,
        "1 thread": 0.0489,
        "2 threads, spinning on": 0.0978,
        "2 threads, spinning off": 0.0978,
    }
    assert found["spread"]["1 thread"] == {"fastest_ms": 0.0489, "slowest_ms": 0.0494, "holds": True}
    assert found["spread"]["2 threads, spinning on"] == {"fastest_ms": 0.0478, "slowest_ms": 0.0978, "holds": False}
    assert found["one_thread"] is True


def test_two_threads_holding_keeps_each_candidate_at_its_own_tuned_settings():
    """Where several threads hold their speed there is no reason to give them up: they may be the faster."""
    found, _ = probed({1: [0.23, 0.231, 0.232], 2: [0.133, 0.134, 0.139]}, seconds=12.0)
    assert found["spread"]["2 threads, spinning off"]["holds"] and found["one_thread"] is False


def test_one_thread_moving_too_keeps_the_tuned_settings_and_the_timings_taken_again():
    """The Xeon of "A host at two speeds": one thread had slow episodes too (19 of 60 rounds)."""
    found, _ = probed({1: [0.053, 0.092, 0.053], 2: [0.050, 0.090, 0.051]}, seconds=12.0)
    assert not found["spread"]["1 thread"]["holds"] and found["one_thread"] is False


def test_the_limit_of_holding_is_ten_percent_between_the_slowest_and_the_fastest_round():
    within, _ = probed({1: [0.1, 0.11], 2: [0.1, 0.1101]}, seconds=0.0)
    assert within["spread"]["1 thread"]["holds"] and not within["spread"]["2 threads, spinning on"]["holds"]
    assert within["one_thread"] is True


def test_a_probe_of_no_seconds_still_takes_two_rounds():
    found, clock = probed({1: [0.1, 0.1], 2: [0.05, 0.05]}, seconds=0.0)
    assert len(found["rounds"]) == 2 and clock.waits == [5.0]


def test_the_probe_applies_with_a_budget_on_this_machines_cpu_with_threads_to_choose_only():
    budget = Params(target_latency_ms=0.1)
    assert thread_probe.applies(budget, cores=2)
    assert thread_probe.applies(Params(target_speedup_vs_teacher=8.0), cores=2)
    assert not thread_probe.applies(budget, cores=1)  # nothing to choose between
    assert not thread_probe.applies(Params(), cores=2)  # prune.ratio: nothing is timed
    for unprobed in (
        {"thread_probe_s": 0.0},
        {"target_threads": 2},
        {"target_provider": "cuda"},
        {"target_device": "ssh://board"},  # the device's own bench holds its settings to its rounds
    ):
        assert not thread_probe.applies(dataclasses.replace(budget, **unprobed), cores=2), unprobed


def test_the_probe_times_the_student_in_fresh_sessions_at_one_thread_and_at_every_core(monkeypatch):
    short = dict(warmup_runs=2, warmup_seconds=0, min_runs=20, min_seconds=0)  # this test is about what is timed
    monkeypatch.setattr(prune_candidates, "SEARCH_TIMING", (short, short))
    params = Params(target_latency_ms=1.0, target_format="fastest", thread_probe_s=0.0)
    measure = candidates_for(params)
    try:
        found = thread_probe.measured(measure, params)
    finally:
        measure.close()
    cores = environment.cores()
    assert found["form"] == "int8" and len(found["rounds"]) == 2  # the last form measured: int8 where it may ship
    assert list(found["spread"]) == list(thread_probe.settings_probed(cores))
    assert all(row[label] > 0 for row in found["rounds"] for label in found["spread"])
    assert found["asked"] == {"target_threads": None, "retime_rounds": 4}


def test_a_probe_that_found_one_thread_times_the_candidates_at_one_thread_and_takes_no_timing_again():
    asked = Params(target_latency_ms=0.1, retime_rounds=4)
    found = {"one_thread": True, "asked": thread_probe.asked(asked)}
    resolved = thread_probe.resolved(asked, found)
    assert (resolved.target_threads, resolved.retime_rounds) == (1, 0)
    assert thread_probe.as_asked(resolved, found) == asked  # the teacher is timed at its own settings
    assert thread_probe.resolved(asked, {**found, "one_thread": False}) == asked
    assert thread_probe.resolved(asked, None) == asked and thread_probe.as_asked(asked, None) == asked


def test_the_probe_is_kept_for_a_resumed_run(tmp_path, monkeypatch):
    if environment.cores() < 2:
        pytest.skip("one core: nothing to probe")
    params = Params(target_latency_ms=0.1, thread_probe_s=30.0)
    found = {"one_thread": True, "asked": thread_probe.asked(params), "spread": {}, "rounds": []}
    saved = tmp_path / CHECKPOINTS / thread_probe.SAVED
    saved.parent.mkdir()
    saved.write_text(json.dumps(found))

    def not_again(*_):
        raise AssertionError("a kept probe is not timed again")

    monkeypatch.setattr(thread_probe.prune_budget, "candidates", not_again)
    monkeypatch.setattr(thread_probe, "summary", lambda found: "")
    resolved, kept = thread_probe.applied(params, None, None, None, tmp_path)
    assert kept == found and (resolved.target_threads, resolved.retime_rounds) == (1, 0)


def test_the_probe_in_words():
    found, _ = probed({1: [0.0491, 0.0489], 2: [0.0478, 0.0978]}, seconds=0.0)
    found = {**found, "form": "int8", "asked": {}}
    assert thread_probe.text(found) == (
        "Before the searches the student (int8) was timed in 2 rounds over 0 s: 1 thread 0.0489–0.0491 ms (held); "
        "2 threads, spinning on 0.0478–0.0978 ms (moved); 2 threads, spinning off 0.0478–0.0978 ms (moved); a "
        "setting holds when its slowest round is within 10% of its fastest, so candidates were timed at one thread, "
        "and no timing was taken again."
    )
    assert thread_probe.summary(found) == (
        "thread probe: 1 thread 0.0489–0.0491 ms, several 0.0478–0.0978 ms: candidates at one thread; "
    )
    assert thread_probe.text(None) == "" and thread_probe.summary(None) == ""
