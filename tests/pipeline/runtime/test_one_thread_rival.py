"""A settings search of more than one thread held to the bench's rounds (pipeline/runtime/one_thread_rival.py): its
fastest one-thread setting is timed beside it in every round, and the faster over the rounds is what the model keeps."""

import numpy as np
import pytest

from pipeline.runtime import device, one_thread_rival, tuning
from pipeline.runtime.one_thread_rival import every_round

TRIED = tuning.candidates((1, 2), (False, True), ("all",))  # 1 off, 1 on, 2 off, 2 on


def trace(screens: list[float | None], chosen: int, tried=TRIED) -> list[dict]:
    return [
        {"label": s.label(), "screen_ms": ms, "refine_ms": None, "chosen": i == chosen}
        for i, (s, ms) in enumerate(zip(tried, screens, strict=True))
    ]


def test_the_rival_is_the_searchs_fastest_one_thread_setting_and_only_when_it_chose_more():
    searched = trace([0.070, 0.060, 0.090, 0.050], chosen=3)
    assert one_thread_rival.rival(searched, TRIED, TRIED[3]) == TRIED[1]  # 1 thread, spinning on: 0.060
    assert one_thread_rival.rival(searched, TRIED, TRIED[1]) is None  # it chose one thread
    assert one_thread_rival.rival(None, TRIED[:1], TRIED[0]) is None  # nothing was searched
    two_only = [s for s in TRIED if s.threads == 2]
    none_of_one = trace([0.09, 0.05], 1, two_only)  # no one-thread setting tried
    assert one_thread_rival.rival(none_of_one, two_only, two_only[1]) is None


def test_the_check_reads_every_rounds_median_dropped_ones_included():
    # Two threads at two speeds: three rounds slow kept, two fast dropped as disturbed; one thread steady between
    theirs = {"round_medians": [0.099, 0.098, 0.100], "dropped_medians": [0.048, 0.049]}
    ours = {"round_medians": [0.060, 0.061, 0.060, 0.060, 0.061], "dropped_medians": []}
    check = one_thread_rival.held(TRIED[3], TRIED[1], every_round(theirs), every_round(ours))
    assert check["kept"] == "one_thread" and check["searched_ms"] == pytest.approx(0.098)
    assert check["searched_rounds_ms"] == [0.099, 0.098, 0.100, 0.048, 0.049] and check["one_thread_ms"] == 0.060
    # Most rounds fast: the median is the fast speed, and the search's setting stays
    theirs = {"round_medians": [0.048, 0.049, 0.050], "dropped_medians": [0.099, 0.098]}
    assert one_thread_rival.held(TRIED[3], TRIED[1], every_round(theirs), every_round(ours))["kept"] == "searched"


def fake_timings(monkeypatch, in_rounds_ms: dict[int, float]):
    """Sessions whose milliseconds per image depend only on their thread count: in the settings search (a burst)
    two threads run at 0.05 and one at 0.06; in the bench's rounds two threads run at `in_rounds_ms[2]`. Returns the
    settings every round was timed with."""
    timed = []

    def session(ms_by_threads):
        def time_session(path, provider, settings, feed, preset, batch, options=None):
            timed.append((path.name, settings.label(), batch))
            per_image = ms_by_threads[settings.threads] * (1 + 0.1 * (not settings.spinning))
            return np.full(20, per_image * batch), 0.0

        return time_session

    monkeypatch.setattr(tuning, "time_session", session({1: 0.06, 2: 0.05}))
    monkeypatch.setattr(device, "time_session", session({1: 0.06, **in_rounds_ms}))
    return timed


def bench_request(tmp_path) -> tuple[dict, device.Locate]:
    files = {"model": tmp_path / "model.onnx", "feed-1": tmp_path / "f1.npy", "feed-4": tmp_path / "f4.npy"}
    files["model"].write_bytes(b"not read: the sessions are faked")
    for batch in (1, 4):
        np.save(files[f"feed-{batch}"], np.zeros((batch, 3, 8, 8), np.float32))
    request = {
        "models": {"tiny": "model"},
        "feeds": {"1": "feed-1", "4": "feed-4"},
        "settings_batch": 1,
        "batch_sizes": [1, 4],
        "providers": ["cpu"],
        "provider_options": {},
        "tune": True,
        "threads": [1, 2],
        "spinning": [False, True],
        "optimization": ["all"],
        "rounds": 5,
        "tolerance": 0.1,
        "retries": 1,
        "preset": {},
        "memory": False,
        "accuracy": None,
    }
    return request, files.__getitem__


def test_two_threads_slower_in_the_rounds_than_their_search_hand_the_model_to_one_thread(tmp_path, monkeypatch):
    timed = fake_timings(monkeypatch, {2: 0.10})
    request, locate = bench_request(tmp_path)
    answer = device.bench(request, locate)["models"]["tiny"]
    check = answer["settings_check"]
    assert (check["searched"], check["one_thread"]) == ("2 threads, spinning on, all", "1 thread, spinning on, all")
    assert check["kept"] == "one_thread" and check["searched_ms"] == pytest.approx(0.10)
    assert answer["settings_label"] == "1 thread, spinning on, all"
    assert answer["settings"]["intra_op_num_threads"] == 1
    chosen = [entry["label"] for entry in answer["settings_search"] if entry["chosen"]]
    assert chosen == ["1 thread, spinning on, all"]  # the search's timing the report reads is the kept setting's
    cpu = answer["latency"]["CPUExecutionProvider"]
    assert cpu["1"]["p50_ms"] == pytest.approx(0.06) and cpu["4"]["p50_ms"] == pytest.approx(0.24)  # 4 images
    # The rounds after the check timed the kept setting at every batch
    assert ("model.onnx", "1 thread, spinning on, all", 4) in timed


def test_two_threads_faster_in_the_rounds_too_keep_their_place(tmp_path, monkeypatch):
    fake_timings(monkeypatch, {2: 0.05})
    request, locate = bench_request(tmp_path)
    answer = device.bench(request, locate)["models"]["tiny"]
    assert answer["settings_check"]["kept"] == "searched" and answer["settings_label"] == "2 threads, spinning on, all"
    assert answer["latency"]["CPUExecutionProvider"]["1"]["p50_ms"] == pytest.approx(0.05)


def test_a_search_of_one_thread_or_a_fixed_setting_is_not_checked(tmp_path, monkeypatch):
    fake_timings(monkeypatch, {2: 0.10})
    request, locate = bench_request(tmp_path)
    answer = device.bench({**request, "threads": [1]}, locate)["models"]["tiny"]
    assert answer["settings_check"] is None and answer["settings_label"].startswith("1 thread")
    answer = device.bench({**request, "tune": False, "threads": [2]}, locate)["models"]["tiny"]
    assert answer["settings_check"] is None and answer["settings_label"].startswith("2 threads")
