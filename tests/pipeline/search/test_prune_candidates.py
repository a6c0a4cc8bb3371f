from pathlib import Path

import numpy as np

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.sessions import SessionSettings
from pipeline.search import prune_budget, prune_candidates
from pipeline.search.prune_candidates import repeated
from stages.prune import Params

SPEC = ModelSpec("cnn", 8, 1, 10, (8, 8))


def candidates_for(params: Params, images: np.ndarray | None = None) -> prune_candidates.Candidates:
    """The search's measurer for a width-8 digits cnn (its student is `.student`), pruned by `params`' rule."""
    images = np.zeros((8, 1, 8, 8), dtype=np.uint8) if images is None else images
    pruning = prune_budget.pruning(SPEC, params)
    return prune_candidates.Candidates(build_model(SPEC).eval(), SPEC, images, ([0.5], [0.25]), params, pruning)


def test_a_repeated_measurement_is_the_median_one_with_every_latency_in_order():
    latencies = iter([0.30, 0.20, 0.25, 0.40, 0.10])

    def measure(setting):
        ms = next(latencies)
        return {"latency_ms": ms, "format": f"run at {ms}", "setting": setting}

    three = repeated(measure, 3)
    median = three(0.5)
    assert median == {"latency_ms": 0.25, "format": "run at 0.25", "setting": 0.5, "latency_runs_ms": [0.3, 0.2, 0.25]}
    two = repeated(measure, 2)  # an even count takes the lower middle: the search errs towards meeting a budget
    lower = two({"a": 8})
    assert lower == {"latency_ms": 0.1, "format": "run at 0.1", "setting": {"a": 8}, "latency_runs_ms": [0.4, 0.1]}


def test_a_setting_measured_again_is_timed_again_from_the_files_of_its_one_export(monkeypatch):
    timed = []

    def p50(self, path):  # the file's size stands in for its latency: this test is about files, not timings
        timed.append(path)
        return path.stat().st_size / 1e6, "size"

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    candidates = candidates_for(Params(target_format="fastest"), images)
    first = repeated(candidates, 3)(0.5)
    assert candidates.exports == 1 and len(timed) == 6  # fp32 and int8, each timed three times
    assert [path.name for path in timed[:2]] == ["candidate-1.onnx", "candidate-1-int8.onnx"] and set(timed[2:]) == set(
        timed[:2]
    )
    assert first["latency_runs_ms"] == [first["latency_ms"]] * 3 and first["format"] == "int8"  # the smaller file
    unpruned = candidates({})
    assert candidates.exports == 2 and unpruned["macs"] > first["macs"]
    assert candidates(0.5) == {key: value for key, value in first.items() if key != "latency_runs_ms"}
    assert candidates.exports == 2
    # Only the last KEPT_SETTINGS settings keep their files; an older one is exported again when measured again.
    monkeypatch.setattr(prune_candidates, "KEPT_SETTINGS", 2)
    candidates(0.25)
    assert not timed[0].exists() and not timed[1].exists() and candidates.exports == 3
    candidates(0.5)
    assert candidates.exports == 4
    # A model measured directly (the fine-tuned one) is exported afresh and leaves no file behind.
    kept = sorted(path.name for path in Path(candidates.work.name).iterdir())
    candidates.measure(candidates.student)
    assert candidates.exports == 5 and sorted(path.name for path in Path(candidates.work.name).iterdir()) == kept
    candidates.close()


def test_an_int8_target_keeps_only_the_int8_file(monkeypatch):
    monkeypatch.setattr(prune_candidates.Candidates, "p50", lambda self, path: (1.0, "fixed"))
    candidates = candidates_for(Params(target_format="int8"))
    result = candidates({})
    assert result["format"] == "int8" and "fp32_ms" not in result
    assert [path.name for path in Path(candidates.work.name).iterdir()] == ["candidate-1-int8.onnx"]
    candidates.close()


def test_a_file_measured_again_is_timed_at_the_settings_its_first_measurement_chose(monkeypatch):
    tried = []

    def tune(path, provider, feed, batch, settings, screen, refine):
        tried.append((path.name, list(settings)))
        return settings[-1], 0.01, []  # the last setting "wins": a choice the search cannot make by accident

    monkeypatch.setattr(prune_candidates.tuning, "tune", tune)
    params = Params(target_format="fp32")
    every = prune_candidates.settings_tried(params)
    candidates = candidates_for(params)
    first = repeated(candidates, 3)(0.5)
    assert len(every) > 1 and tried == [("candidate-1.onnx", every)] + [("candidate-1.onnx", [every[-1]])] * 2
    assert first["fp32_settings"] == every[-1].label()
    tried.clear()
    candidates.measure(candidates.student)  # exported afresh: its settings are searched, then forgotten
    assert tried == [("candidate-2.onnx", every)] and list(candidates.chosen) == [
        Path(candidates.work.name) / "candidate-1.onnx"
    ]
    monkeypatch.setattr(prune_candidates, "KEPT_SETTINGS", 1)
    candidates(0.25)
    assert list(candidates.chosen) == [Path(candidates.work.name) / "candidate-3.onnx"]  # the evicted file's went
    candidates.close()


def test_on_a_device_a_file_measured_again_sends_the_one_setting_its_first_measurement_chose(monkeypatch):
    requests, chosen = [], SessionSettings(2, True, "extended")

    def bench(device, request, located, timeout):
        requests.append(request)
        stats = {"1": {"round_medians_ms": [0.02, 0.01, 0.03]}}
        candidate = {"latency": {"CPUExecutionProvider": stats}, "settings": chosen.record(), "settings_label": "x"}
        return {"skipped_providers": {}, "models": {"candidate": candidate}}

    monkeypatch.setattr(prune_candidates.targets, "bench", bench)
    candidates = candidates_for(Params(target_format="fp32", target_device="ssh://board"))
    first = repeated(candidates, 2)(0.5)
    assert first["latency_ms"] == 0.02 and len(requests) == 2
    assert requests[0]["tune"] and requests[0]["threads"] is None  # the device's own cores, every setting
    assert not requests[1]["tune"] and (requests[1]["threads"], requests[1]["spinning"]) == ([2], [True])
    assert requests[1]["optimization"] == ["extended"]
    candidates.close()
