"""Interleaved rounds and the settings search, on fake timers: the method, not the machine, is under test."""

import numpy as np
import pytest

from pipeline.runtime import rounds, tuning
from pipeline.runtime.sessions import SessionSettings


class FakeClock:
    """Jobs whose every call returns 50 runs around a fixed latency; `disturb` makes chosen calls slower."""

    def __init__(self, latency: dict[str, float], disturb: dict[tuple[str, int], float] | None = None):
        self.latency, self.disturb = latency, disturb or {}
        self.calls: list[str] = []

    def job(self, name: str):
        def call():
            self.calls.append(name)
            factor = self.disturb.get((name, self.calls.count(name)), 1.0)
            return self.latency[name] * factor * (1 + np.linspace(-0.01, 0.01, 50))

        return call


def test_every_job_once_per_round_in_a_rotated_order():
    clock = FakeClock({"a": 1.0, "b": 2.0, "c": 3.0})
    measured = rounds.measure({n: clock.job(n) for n in "abc"}, rounds=3, tolerance=0.1, retries=2)
    assert clock.calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {n: m["round_medians"] for n, m in measured.items()} == {
        "a": [1.0, 1.0, 1.0],
        "b": [2.0, 2.0, 2.0],
        "c": [3.0, 3.0, 3.0],
    }
    assert all(m["stable"] and m["spread"] == 0 and m["dropped_medians"] == [] for m in measured.values())
    assert len(measured["a"]["times"]) == 3 * 50


def test_a_disturbed_round_is_caught_dropped_and_measured_again():
    clock = FakeClock({"a": 1.0, "b": 2.0}, disturb={("a", 2): 2.0})  # a's second call runs at half speed
    measured = rounds.measure({n: clock.job(n) for n in "ab"}, rounds=5, tolerance=0.1, retries=2)
    a = measured["a"]
    assert a["dropped_medians"] == [pytest.approx(2.0)]
    assert a["round_medians"] == [pytest.approx(1.0)] * 5  # four kept rounds and the one measured again
    assert a["stable"] and a["spread"] == pytest.approx(0.0)
    assert np.median(a["times"]) == pytest.approx(1.0)
    assert clock.calls.count("a") == 6 and clock.calls.count("b") == 5  # only the disturbed job is redone


def test_a_job_that_stays_disturbed_is_marked_unstable():
    disturb = {("a", call): 3.0 for call in (2, 6, 7)}  # its second call, and both retries
    clock = FakeClock({"a": 1.0}, disturb=disturb)
    a = rounds.measure({"a": clock.job("a")}, rounds=5, tolerance=0.1, retries=2)["a"]
    assert not a["stable"] and a["spread"] == pytest.approx(2.0)
    assert a["dropped_medians"] == [pytest.approx(3.0), pytest.approx(3.0)]


def test_the_settings_search_picks_the_fastest_measured_and_drops_hopeless_ones_early(monkeypatch, tmp_path):
    latency = {
        SessionSettings(1, False, "all"): 1.0,
        SessionSettings(1, True, "all"): 0.8,  # the fastest
        SessionSettings(2, False, "all"): 3.0,  # hopeless: dropped after the screen
        SessionSettings(2, True, "all"): 0.9,
    }
    timed = []

    def fake_time_session(path, provider, settings, feed, preset, batch):
        timed.append((settings, preset is tuning.SCREEN))
        return latency[settings] * (1 + np.linspace(-0.01, 0.01, 50)), 0.0

    monkeypatch.setattr(tuning, "time_session", fake_time_session)
    settings = tuning.candidates((1, 2), (False, True), ("all",))
    assert settings == list(latency)
    best, p50, trace = tuning.tune(tmp_path / "model.onnx", "cpu", {}, 1, settings)
    assert best == SessionSettings(1, True, "all") and p50 == pytest.approx(0.8)
    assert [entry["chosen"] for entry in trace] == [False, True, False, False]
    assert [entry["refine_ms"] is None for entry in trace] == [True, False, True, False]  # the faster half refined
    refined = {s for s, screen in timed if not screen}
    assert refined == {SessionSettings(1, True, "all"), SessionSettings(2, True, "all")}
    assert sum(screen for _, screen in timed) == 4  # every candidate screened once
    assert trace[1]["settings"] == best.record() and trace[1]["label"] == "1 thread, spinning on, all"


def test_settings_records_round_trip():
    settings = SessionSettings(2, True, "extended")
    record = settings.record()
    assert record["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert record["session_config"] == {"session.intra_op.allow_spinning": "1"}
    assert SessionSettings.from_record(record) == settings
    options = settings.options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
