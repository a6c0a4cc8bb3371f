import numpy as np
import pytest

from pipeline.runtime.latency import summarize
from stages.bench import PROVIDER


def test_percentiles_of_a_known_sample():
    stats = summarize(np.arange(1, 101, dtype=np.float64))
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["runs"] == 100


def test_bench_measures_every_model_at_every_batch(tiny_run):
    _, results = tiny_run
    metrics = results["bench"].artifact.metrics
    assert [m["name"] for m in metrics["models"]] == ["teacher", "student", "pruned", "int8", "student_int8"]
    for model in metrics["models"]:
        for batch in ("1", "8"):
            stats = model["latency"][PROVIDER][batch]
            assert stats["runs"] >= 2 * 20 and 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
            assert len(stats["round_medians_ms"]) == 2 and stats["spread"] >= 0  # two interleaved rounds
            for percentile in ("p95", "p99"):  # what a bound p95 or p99 gate reads
                low, high = stats[f"{percentile}_ci_ms"]
                assert low <= stats[f"{percentile}_ms"] <= high <= stats["max_ms"]
        assert 0.5 < model["accuracy"] <= 1.0
        chosen = [entry for entry in model["settings_search"] if entry["chosen"]]
        assert len(model["settings_search"]) == metrics["machine"]["cores"] and len(chosen) == 1  # 1 thread, 2, ...
        assert chosen[0]["settings"] == model["settings"]  # measured and shipped with the fastest found
        check = model["settings_check"]  # a search of more than one thread held to the rounds against one thread
        if check is not None:
            assert model["settings_label"] == check[check["kept"]] and check["one_thread"].startswith("1 thread")
        assert model["memory"]["peak_rss_mb"] > model["memory"]["baseline_rss_mb"] > 10
    assert metrics["environment"]["cores"] >= 1 and metrics["machine"]["cores"] == metrics["environment"]["cores"]
    assert metrics["method"]["settings"].startswith("tuned per model at batch 1; a winner of more than one thread")


def test_class_breakdown_counts_true_against_predicted():
    from stages.bench import class_breakdown

    result = class_breakdown(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["per_class_accuracy"] == [0.5, 1.0, 0.0]
