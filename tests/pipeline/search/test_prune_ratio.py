import json

import pytest

from pipeline.search.prune_ratio import grid, search_ratio


def fake(curve):
    """A measure function from a latency curve, remembering which ratios it was asked for."""
    asked = []

    def measure(ratio):
        asked.append(ratio)
        return {"latency_ms": curve(ratio), "format": "fp32"}

    measure.asked = asked
    return measure


def search(measure, budget, **kwargs):
    options = dict(margin=0.0, max_ratio=0.9, step=0.1, refine=3, time_budget_s=1e9)
    return search_ratio(measure, budget, **{**options, **kwargs})


def test_grid_runs_from_zero_to_the_maximum():
    assert grid(0.9, 0.1) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert grid(0.5, 0.2) == [0.0, 0.2, 0.4, 0.5]


def test_monotone_curve_gives_the_least_ratio_that_meets_the_budget():
    measure = fake(lambda r: 1.0 - r)  # 1 ms unpruned, 0.1 ms at 0.9
    decision = search(measure, budget=0.62)
    # Scan 0..0.4 (0.4 is the first at <= 0.62), then bisect in (0.3, 0.4]: 0.35 and 0.375 miss, 0.3875 meets.
    assert measure.asked == [0.0, 0.1, 0.2, 0.3, 0.4, 0.35, 0.375, 0.3875]
    assert decision["ratio"] == 0.3875 and decision["met"] is True
    assert decision["predicted_ms"] == pytest.approx(0.6125)
    assert [e["ratio"] for e in decision["trace"]] == measure.asked
    json.dumps(decision)  # the decision travels between processes and into the cache as JSON


def test_margin_demands_headroom_below_the_budget():
    decision = search(fake(lambda r: 1.0 - r), budget=0.62, margin=0.5, refine=0)
    assert decision["limit_ms"] == pytest.approx(0.31)
    assert decision["ratio"] == 0.7  # 0.3 ms; 0.6 gives 0.4 > 0.31


def test_non_monotone_curve_is_not_stepped_over():
    # A dip at 0.3 (channel counts that suit the kernels), a bump at 0.5-0.6 (e.g. int8 overhead on thin layers).
    table = {0.0: 1.0, 0.1: 0.9, 0.2: 0.8, 0.3: 0.45, 0.4: 0.7, 0.5: 0.9, 0.6: 0.9, 0.7: 0.4, 0.8: 0.3, 0.9: 0.2}

    def curve(ratio):
        return table.get(ratio, 0.75)  # between grid points: misses

    decision = search(fake(curve), budget=0.5)
    assert decision["ratio"] == 0.3  # bisection over [0, 0.9] would probe 0.45 (0.75), go right and find 0.7
    assert decision["met"] and decision["predicted_ms"] == 0.45
    assert all(e["ratio"] < 0.4 for e in decision["trace"])  # it never needed the far end


def test_budget_met_unpruned_prunes_nothing():
    measure = fake(lambda r: 0.2)
    decision = search(measure, budget=1.0)
    assert decision["ratio"] == 0.0 and decision["met"] and measure.asked == [0.0]


def test_unreachable_budget_says_so_with_the_closest_latency():
    decision = search(fake(lambda r: 1.0 - 0.5 * r), budget=0.3, max_ratio=0.8, step=0.2)
    assert decision["met"] is False and decision["out_of_time"] is False
    assert decision["ratio"] == 0.8 and decision["predicted_ms"] == pytest.approx(0.6)
    assert [e["ratio"] for e in decision["trace"]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert decision["message"] == (
        "latency budget 0.3 ms (limit 0.3 ms with margin 0) not reached: no ratio up to prune.max_ratio met it; "
        "the closest measured is 0.6 ms at ratio 0.8"  # what ships is said by prune_plateau.settled
    )


def test_time_budget_bounds_the_search_and_it_decides_on_what_it_measured():
    now = [0.0]

    def clock():
        return now[0]

    def measure(ratio):
        now[0] += 10.0  # each candidate takes 10 s
        return {"latency_ms": 1.0 - ratio}

    decision = search_ratio(measure, 0.5, 0.0, 0.9, 0.1, 3, time_budget_s=25.0, clock=clock)
    assert [e["ratio"] for e in decision["trace"]] == [0.0, 0.1, 0.2]  # started at 0, 10 and 20 s
    assert decision["out_of_time"] and not decision["met"] and decision["ratio"] == 0.2
    assert "prune.search_budget_s ran out first" in decision["message"]


def test_same_measurements_same_decision():
    first = search(fake(lambda r: 1.0 - r), budget=0.55)
    again = search(fake(lambda r: 1.0 - r), budget=0.55)
    first.pop("seconds"), again.pop("seconds")
    assert first == again
