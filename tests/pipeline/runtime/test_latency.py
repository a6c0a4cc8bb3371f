"""Latency statistics on known samples, the p90 confidence interval against exact binomial ranks, warm-up and
stopping rules with a fake session."""

import inspect
import math
import time

import numpy as np
import pytest

from pipeline.runtime.latency import (
    QUICK,
    SIGN_OFF,
    has_upper_bound,
    order_statistic_ranks,
    summarize,
    tail_intervals,
    time_runs,
)

KEYS = {
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "runs",
    "throughput_ips",
    "p90_ci_ms",
    "histogram",
}


def measure(sess, warmup_runs, min_runs, min_seconds, warmup_seconds=0.0, run=None):
    """What the bench tools do: time `run` (default: the session's run) and summarize."""
    call = run or (lambda: sess.run(None, {"x": np.zeros(1)}))
    return summarize(time_runs(call, warmup_runs, warmup_seconds, min_runs, min_seconds))


class FakeSession:
    """Records the start and end of every run(); each run sleeps `seconds`."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.calls: list[tuple[float, float]] = []

    def run(self, outputs, feed):
        start = time.perf_counter()
        if self.seconds:
            time.sleep(self.seconds)
        self.calls.append((start, time.perf_counter()))
        return [feed["x"]]


def exact_ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    """Independent equal-tailed order-statistic ranks with exact integer binomial coefficients."""
    tail = (1 - confidence) / 2
    cdf, total = [], 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * q**k * (1 - q) ** (n - k)
        cdf.append(total)
    r = max((k + 1 for k in range(n + 1) if cdf[k] <= tail), default=0)  # P(B <= r - 1) <= tail
    s = min(k + 1 for k in range(n + 1) if cdf[k] >= 1 - tail)  # P(B <= s - 1) >= 1 - tail
    return r, s


def test_summary_of_1_to_100_ms():
    stats = summarize(np.arange(1, 101, dtype=float), batch=4)
    assert set(stats) == KEYS
    # numpy's linear interpolation: position (n - 1) * q between the order statistics
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert stats["std_ms"] == pytest.approx(math.sqrt(sum((x - 50.5) ** 2 for x in range(1, 101)) / 99))
    assert (stats["min_ms"], stats["max_ms"], stats["runs"]) == (1.0, 100.0, 100)
    assert stats["throughput_ips"] == pytest.approx(4 * 100 / (5050 / 1000))  # batch * runs / timed seconds


def test_summary_order_does_not_matter_and_one_run_works():
    shuffled = np.random.default_rng(0).permutation(np.arange(1, 101, dtype=float))
    assert summarize(shuffled)["p90_ci_ms"] == summarize(np.sort(shuffled))["p90_ci_ms"]
    single = summarize([2.0])
    assert (single["p50_ms"], single["std_ms"], single["p90_ci_ms"], single["runs"]) == (2.0, 0.0, [2.0, 2.0], 1)
    with pytest.raises(ValueError, match="at least one timed run"):
        summarize([])


def test_histogram_counts_every_run_and_spans_the_middle_99_percent():
    times = np.random.default_rng(1).lognormal(0.0, 0.5, size=5000)
    hist = summarize(times)["histogram"]
    assert sum(hist["counts"]) == 5000
    assert len(hist["counts"]) == 30 and len(hist["edges_ms"]) == 31
    assert hist["edges_ms"][0] == pytest.approx(np.percentile(times, 0.5))
    assert hist["edges_ms"][-1] == pytest.approx(np.percentile(times, 99.5))
    assert hist["counts"][0] >= 25 and hist["counts"][-1] >= 25  # the 0.5% tails are in the end bins


@pytest.mark.parametrize("n", [10, 35, 50, 200])
def test_ranks_match_an_independent_exact_binomial_computation(n):
    assert order_statistic_ranks(n, 0.9, 0.95) == exact_ranks(n, 0.9, 0.95)


def test_ranks_for_1000_runs_and_for_millions():
    assert order_statistic_ranks(1000, 0.9, 0.95) == (881, 919)
    started = time.perf_counter()
    r, s = order_statistic_ranks(3_000_000, 0.9, 0.95)
    assert time.perf_counter() - started < 1.0
    half_width = 1.96 * math.sqrt(3_000_000 * 0.9 * 0.1)  # the normal approximation agrees at this n
    assert abs(r - (2_700_000 - half_width)) < 3 and abs(s - (2_700_000 + half_width)) < 3


def test_small_samples_fall_back_to_min_and_max():
    assert order_statistic_ranks(10, 0.9, 0.95) == (7, 11)  # a lower bound exists, an upper one needs n >= 36
    times = np.arange(1.0, 11.0)
    assert summarize(times)["p90_ci_ms"] == [7.0, 10.0]
    assert order_statistic_ranks(1, 0.9, 0.95) == (0, 2)  # neither side exists


@pytest.mark.parametrize("quantile,fewest", [(0.9, 36), (0.95, 72), (0.99, 368)])
def test_an_upper_bound_needs_enough_runs(quantile, fewest):
    # 1 - q**n >= 97.5%: the slowest run is above the quantile with that probability only from `fewest` runs on
    assert not has_upper_bound(fewest - 1, quantile) and has_upper_bound(fewest, quantile)
    assert exact_ranks(fewest, quantile, 0.95)[1] == fewest  # the slowest of `fewest` runs
    assert exact_ranks(fewest - 1, quantile, 0.95)[1] == fewest  # rank n + 1: no upper bound among n runs


def test_tail_intervals_cover_the_true_p95_and_p99_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    n, trials = 1000, 1000
    samples = rng.exponential(1.0, size=(trials, n))
    for quantile in (0.95, 0.99):
        true = -math.log(1 - quantile)
        key = f"p{round(quantile * 100)}_ci_ms"
        covered = [low <= true <= high for low, high in (tail_intervals(sample)[key] for sample in samples)]
        assert 0.93 <= np.mean(covered) <= 0.99, (quantile, np.mean(covered))
    few = tail_intervals(np.arange(1.0, 301.0))  # 300 runs: a p95 upper bound below the slowest, no p99 one
    assert few["p95_ci_ms"][1] < 300.0 and few["p99_ci_ms"][1] == 300.0


def test_p90_interval_covers_the_true_p90_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    n, trials = 200, 2000
    samples = np.sort(rng.exponential(1.0, size=(trials, n)), axis=1)
    true_p90 = -math.log(0.1)
    r, s = order_statistic_ranks(n, 0.9, 0.95)
    covered = (samples[:, r - 1] <= true_p90) & (true_p90 <= samples[:, s - 1])
    assert 0.94 <= covered.mean() <= 0.99  # exact coverage of the discrete interval is a little above 95%
    low, high = summarize(samples[0])["p90_ci_ms"]
    assert low <= summarize(samples[0])["p90_ms"] <= high


def test_warm_up_runs_by_count():
    sess = FakeSession()
    stats = measure(sess, warmup_runs=7, min_runs=5, min_seconds=0.0)
    assert stats["runs"] == 5
    assert len(sess.calls) == 12  # 7 warm-up + 5 timed


def test_warm_up_by_time_continues_after_the_count_is_met():
    sess = FakeSession(seconds=0.002)
    stats = measure(sess, warmup_runs=2, min_runs=3, min_seconds=0.0, warmup_seconds=0.05)
    warmups = len(sess.calls) - stats["runs"]
    assert stats["runs"] == 3 and warmups > 2
    assert sess.calls[warmups - 1][1] - sess.calls[0][0] >= 0.05  # warm-up lasted its time
    assert sess.calls[warmups - 2][0] - sess.calls[0][0] < 0.05  # ...and stopped once it had


def test_timed_runs_honour_both_min_runs_and_min_seconds():
    sess = FakeSession(seconds=0.002)
    stats = measure(sess, warmup_runs=0, min_runs=2, min_seconds=0.05)
    # The loop's clock starts just before the first run and is read just after the last: the runs themselves span
    # a few microseconds less (0.0499957 s in one CI run on a loaded machine). 1 ms of slack; 2 runs would be 4 ms.
    assert stats["runs"] > 2 and sess.calls[-1][1] - sess.calls[0][0] >= 0.05 - 0.001
    assert stats["min_ms"] >= 2.0  # each timed run includes its 2 ms sleep
    stats = measure(FakeSession(), warmup_runs=0, min_runs=50, min_seconds=0.0)
    assert stats["runs"] == 50


def test_run_callable_replaces_sess_run():
    sess, calls = FakeSession(), []
    stats = measure(sess, warmup_runs=1, min_runs=4, min_seconds=0.0, run=lambda: calls.append(1))
    assert len(calls) == 5 and stats["runs"] == 4 and sess.calls == []


def test_presets_fit_measure_and_sign_off_follows_mlperf():
    parameters = set(inspect.signature(time_runs).parameters)
    assert set(SIGN_OFF) == set(QUICK) == {"warmup_runs", "warmup_seconds", "min_runs", "min_seconds"} <= parameters
    assert SIGN_OFF["min_runs"] >= 1024 and SIGN_OFF["min_seconds"] >= 60.0
    assert QUICK["min_runs"] < SIGN_OFF["min_runs"] and QUICK["min_seconds"] < SIGN_OFF["min_seconds"]
    stats = measure(FakeSession(), **{**QUICK, "warmup_seconds": 0.0, "min_seconds": 0.0})
    assert stats["runs"] == QUICK["min_runs"]
