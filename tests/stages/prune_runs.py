"""A pipeline run up to the prune stage (or beyond) for the prune tests: small, fast, no floor check."""


def run_prune(store, *sets, target="prune"):
    """The prune stage's result, or with another target every stage's result by name."""
    from pipeline.runner import load_config, run_pipeline

    fast = ["teacher.width=8", "teacher.epochs=2", "distill.epochs=2", "distill.baseline=false"]
    # Fixed session settings and no memory probe: these tests read the search and the report, not the bench.
    bench = ["bench.batch_sizes=[1]", "bench.warmup_runs=2", "bench.min_runs=20", "bench.min_seconds=0"]
    bench += ["bench.tune=false", "bench.memory=false"]
    # The uniform search unless a test names another (the default per-layer one measures a latency table first).
    basics = [*fast, "prune.finetune_epochs=1", "quantize.calibration_samples=64", "prune.search=uniform"]
    basics.append("prune.retime_gap_s=0")  # a timing over a budget taken again at once: these budgets are missed
    basics.append("prune.thread_probe_s=0")  # no minute of timing first (tests/pipeline/search/test_thread_probe.py)
    config = load_config(overrides=[*basics, *bench, *sets])
    # These tests exercise the prune stage's own handling of budgets, unreachable ones included; the run's floor
    # check before training (tests/pipeline/search/test_student_floor.py) would stop those first.
    results = run_pipeline(config, store, target=target, check_floor=False)
    return results[-1] if target == "prune" else {r.name: r for r in results}


def probe_timing(monkeypatch, two_threads_ms: list[float]) -> None:
    """The thread probe's rounds faked: one thread at 0.05 ms in each, two threads at `two_threads_ms` in turn."""
    from pipeline.search import thread_probe

    real = thread_probe.probe

    def probe(time_one, settings, seconds, **_):
        speeds = {True: iter(two_threads_ms), False: iter(two_threads_ms)}

        def timed(setting):
            return 0.05 if setting.threads == 1 else next(speeds[setting.spinning])

        return real(timed, settings, 0.0, gap_s=0.0)  # two rounds, none waited for

    monkeypatch.setattr(thread_probe, "probe", probe)
