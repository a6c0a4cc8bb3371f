"""Latency of one inference call: warm up, time single runs until a count and a duration are met, summarize.

Method, recorded so a number can be signed off:

- Warm-up runs until BOTH `warmup_runs` calls were made and `warmup_seconds` have passed: first calls pay for
  allocation, graph optimization and (on GPU) kernel/engine selection, which is not latency.
- Timed runs continue until BOTH `min_runs` runs were timed and `min_seconds` have passed. Each run is timed on
  its own with `time.perf_counter_ns`; Python's garbage collector is off while timing (as in `timeit`) so its
  pauses are not charged to the model.
- Percentiles use numpy's default method (linear interpolation between the two nearest order statistics,
  Hyndman & Fan type 7). `std_ms` is the sample standard deviation (ddof=1; 0 for a single run).
- `p90_ci_ms` is a distribution-free 95% confidence interval for the 90th percentile from order statistics:
  with B ~ Binomial(n, 0.9) the number of runs below the true p90, the interval [x_(r), x_(s)] (1-based ranks)
  covers it with probability P(r <= B <= s - 1). r is the largest rank with P(B <= r - 1) <= 2.5% and s the
  smallest with P(B <= s - 1) >= 97.5% (equal tails, coverage >= 95%). The binomial CDF is computed exactly in
  log space (math.lgamma) over nq +- 12 standard deviations, outside of which the mass is below 1e-30, so this is
  exact and costs O(sqrt(n)) even for millions of runs. When n is too small for a side to exist (the upper side
  needs n >= 36 for p90), that side is the sample min or max and the interval covers less than 95%.
- `tail_intervals` gives the same interval for the p95 and the p99, which the bench records for the sign-off's
  `latency_basis: bound`. Their upper sides need more runs: n >= 72 for the p95 and n >= 368 for the p99; below
  that the upper end is the slowest run.
- `histogram` has 30 equal bins between the 0.5th and 99.5th percentiles; runs outside that range are counted in
  the first or last bin, so the counts sum to `runs`.

Presets: SIGN_OFF follows MLPerf single-stream's older rule (p90 over >= 1024 queries and >= 60 s); QUICK is a
development default.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SIGN_OFF = dict(warmup_runs=100, warmup_seconds=5.0, min_runs=1024, min_seconds=60.0)
QUICK = dict(warmup_runs=20, warmup_seconds=0.5, min_runs=200, min_seconds=2.0)
# Searches (pruning candidates, quantization variants) compare many models; the bench stage measures what ships.
SEARCH = dict(warmup_runs=20, warmup_seconds=0.05, min_runs=100, min_seconds=0.1)  # each refine round
SEARCH_SCREEN = dict(warmup_runs=10, warmup_seconds=0.02, min_runs=50, min_seconds=0.03)  # each setting's screen


def per_round(total: dict, rounds: int) -> dict:
    """The preset of one of `rounds` rounds whose timed runs and seconds together reach `total`'s (warm-up is
    per session, so per round)."""
    return {
        **total,
        "min_runs": math.ceil(total["min_runs"] / rounds),
        "min_seconds": total["min_seconds"] / rounds,
    }


PERCENTILES = (50, 90, 95, 99)
CI_QUANTILE = 0.9
CI_CONFIDENCE = 0.95
TAIL_QUANTILES = (0.95, 0.99)
HISTOGRAM_BINS = 30
HISTOGRAM_RANGE = (0.5, 99.5)  # percentiles bounding the bins; the rest goes into the end bins
_WINDOW_SDS = 12  # binomial mass beyond nq +- 12 sd is < 1e-30: negligible next to the 2.5% tails we look for


def time_runs(
    call: Callable[[], object], warmup_runs: int, warmup_seconds: float, min_runs: int, min_seconds: float
) -> np.ndarray:
    """Milliseconds of each timed call, after warm-up; at least one call is timed.

    A model far slower than the minimums assume stops early: warm-up after one call once CAP_SECONDS(...) / 4
    have passed, timing after one call once the cap has: a device too slow for its budget fails its gate in
    bounded time instead of holding the run for min_runs of its slow calls."""
    cap = cap_seconds(warmup_seconds, min_seconds)
    warm_up(call, warmup_runs, warmup_seconds, cap / 4)
    times_ns: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of a run would be charged to the model
    try:
        started = time.perf_counter()
        while len(times_ns) < max(min_runs, 1) or time.perf_counter() - started < min_seconds:
            if times_ns and time.perf_counter() - started > cap:
                break
            begin = time.perf_counter_ns()
            call()
            times_ns.append(time.perf_counter_ns() - begin)
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.array(times_ns, dtype=np.float64) / 1e6


def warm_up(call: Callable[[], object], runs: int, seconds: float, cap: float = math.inf) -> int:
    """Call until both `runs` calls were made and `seconds` have passed (or, after one call, `cap` seconds have);
    returns the number of calls."""
    done = 0
    started = time.perf_counter()
    while done < runs or time.perf_counter() - started < seconds:
        if done and time.perf_counter() - started > cap:
            break
        call()
        done += 1
    return done


def cap_seconds(warmup_seconds: float, min_seconds: float) -> float:
    """How long one session's timing may take before it stops early: 20 times what the preset asks for, and 2 s."""
    return 2.0 + 20 * (warmup_seconds + min_seconds)


def summarize(times_ms: Sequence[float] | np.ndarray, batch: int = 1) -> dict[str, Any]:
    """Percentiles, moments, throughput (images/s at `batch` per run), p90 CI and a histogram of `times_ms`."""
    times = np.sort(np.asarray(times_ms, dtype=np.float64))
    if times.size == 0:
        raise ValueError("summarize needs at least one timed run")
    p50, p90, p95, p99 = np.percentile(times, PERCENTILES)
    mean = float(times.mean())
    low, high = percentile_ci(times, CI_QUANTILE, CI_CONFIDENCE)
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(times.std(ddof=1)) if times.size > 1 else 0.0,
        "min_ms": float(times[0]),
        "max_ms": float(times[-1]),
        "runs": int(times.size),
        # batch * runs / total timed seconds; the sum of the runs is mean * runs.
        "throughput_ips": batch * 1000.0 / mean if mean > 0 else float("inf"),
        "p90_ci_ms": [low, high],
        "histogram": histogram(times),
    }


def tail_intervals(times_ms: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """{"p95_ci_ms", "p99_ci_ms"}: the 95% intervals of the tail percentiles, as `p90_ci_ms` is for the p90."""
    times = np.sort(np.asarray(times_ms, dtype=np.float64))
    return {f"p{round(q * 100)}_ci_ms": list(percentile_ci(times, q, CI_CONFIDENCE)) for q in TAIL_QUANTILES}


def has_upper_bound(runs: int, quantile: float) -> bool:
    """Whether `runs` runs are enough for the upper end of `quantile`'s 95% interval to be an order statistic below
    the slowest run (otherwise that end is the slowest run and covers less)."""
    return order_statistic_ranks(runs, quantile, CI_CONFIDENCE)[1] <= runs


def percentile_ci(sorted_times: np.ndarray, quantile: float, confidence: float) -> tuple[float, float]:
    """Distribution-free confidence interval for `quantile` from the order statistics of sorted samples."""
    n = sorted_times.size
    r, s = order_statistic_ranks(n, quantile, confidence)
    low = sorted_times[r - 1] if r >= 1 else sorted_times[0]
    high = sorted_times[s - 1] if s <= n else sorted_times[-1]
    return float(low), float(high)


def order_statistic_ranks(n: int, quantile: float, confidence: float) -> tuple[int, int]:
    """1-based ranks (r, s) with [x_(r), x_(s)] an equal-tailed `confidence` interval for `quantile`.

    r == 0 means no lower bound exists at this n, s == n + 1 no upper bound.
    """
    tail = (1.0 - confidence) / 2
    ks, cdf = _binomial_cdf_window(n, quantile)
    below = np.searchsorted(cdf, tail, side="right")  # cdf[:below] <= tail
    r = int(ks[below - 1]) + 1 if below > 0 else int(ks[0])  # below the window the CDF is ~0 (if ks[0] > 0)
    above = np.searchsorted(cdf, 1.0 - tail, side="left")  # first cdf >= 1 - tail
    s = int(ks[above]) + 1 if above < ks.size else n + 1
    return r, s


def _binomial_cdf_window(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """k and P(B <= k) for B ~ Binomial(n, p), k over the window where the mass is not negligible."""
    sd = math.sqrt(n * p * (1 - p))
    lo = max(0, math.floor(n * p - _WINDOW_SDS * sd) - _WINDOW_SDS)
    hi = min(n, math.ceil(n * p + _WINDOW_SDS * sd) + _WINDOW_SDS)
    ks = np.arange(lo, hi + 1)
    log_comb = math.lgamma(n + 1) - np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1) for k in ks])
    log_pmf = log_comb + ks * math.log(p) + (n - ks) * math.log1p(-p)
    return ks, np.cumsum(np.exp(log_pmf))


def histogram(sorted_times: np.ndarray) -> dict[str, list]:
    """Equal bins between the 0.5th and 99.5th percentiles; outliers are counted in the end bins."""
    low, high = np.percentile(sorted_times, HISTOGRAM_RANGE)
    counts, edges = np.histogram(np.clip(sorted_times, low, high), bins=HISTOGRAM_BINS, range=(low, high))
    return {"edges_ms": [float(edge) for edge in edges], "counts": [int(count) for count in counts]}
