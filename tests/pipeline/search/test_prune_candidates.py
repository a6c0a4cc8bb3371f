from pipeline.search.prune_candidates import repeated


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
