import json

import pytest

from pipeline.search.prune_layers import (
    Group,
    candidate_counts,
    greedy,
    predict_additive,
    predict_multiplicative,
    search_layers,
)

FULL_MS = 1.0


def group(name, channels, round_to=0, scores=None):
    """A group whose channels all matter equally unless `scores` (ascending) says otherwise."""
    return Group(name, candidate_counts(channels, round_to), tuple(scores or [1.0] * channels))


def linear_table(groups, ms_per_channel):
    """Each group saves `ms_per_channel[name]` per channel removed: a monotone table."""
    return {
        g.name: {count: FULL_MS - ms_per_channel[g.name] * (g.channels - count) for count in g.counts} for g in groups
    }


def fake(groups, table, bias=0.0):
    """A measure function that answers the additive prediction plus `bias`, remembering what it was asked."""
    asked = []

    def measure(channels):
        asked.append(dict(channels))
        return {"latency_ms": predict_additive(groups, table, channels) + bias, "format": "fp32"}

    measure.asked = asked
    return measure


def search(groups, table, measure, budget, **kwargs):
    options = dict(margin=0.0, time_budget_s=1e9)
    return search_layers(groups, table, measure, budget, **{**options, **kwargs})


@pytest.mark.parametrize(
    ("channels", "round_to", "counts"),
    [
        (32, 0, (32, 24, 16, 8)),  # multiples of 8 without round_to, down to one step
        (128, 0, (128, 120, 112, 104, 96, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16)),  # floor 1/8 of the channels
        (64, 16, (64, 48, 32, 16)),
        (10, 0, (10, 8)),  # a full count off the grid keeps the grid below it
        (8, 0, (8,)),  # already at the floor: nothing to prune
    ],
)
def test_candidate_counts_are_multiples_of_the_step_down_to_the_floor(channels, round_to, counts):
    assert candidate_counts(channels, round_to) == counts


def test_monotone_table_prunes_the_cheapest_milliseconds_first_and_measures_once():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})  # a step of a saves 0.08 ms, of b 0.04 ms: a goes first
    measure = fake(groups, table)
    decision = search(groups, table, measure, budget=0.7)
    # a to its floor (8: -0.24 ms), then b until the prediction is <= 0.7: 0.76 - 0.04k -> k = 2 (0.68 ms).
    assert decision["channels"] == {"a": 8, "b": 48}
    assert measure.asked == [{"a": 8, "b": 48}] and decision["met"] is True
    assert decision["model_ms"] == pytest.approx(0.68) and decision["predicted_ms"] == pytest.approx(0.68)
    assert decision["ratio"] == pytest.approx(1 - 56 / 96) and "message" not in decision
    assert decision["table"]["a"] == {"32": 1.0, "24": 0.92, "16": pytest.approx(0.84), "8": pytest.approx(0.76)}
    json.dumps(decision)  # the decision travels between processes and into the cache as JSON


def test_the_least_important_channels_go_first_at_equal_latency():
    quiet = group("quiet", 32, scores=[0.1] * 32)
    loud = group("loud", 32, scores=[3.0] * 32)
    table = linear_table([quiet, loud], {"quiet": 0.01, "loud": 0.01})
    decision = search([quiet, loud], table, fake([quiet, loud], table), budget=0.8)
    assert decision["channels"] == {"quiet": 8, "loud": 32}  # 0.76 ms without touching the important group


def test_a_measurement_that_misses_continues_the_greedy_steps_and_measures_again():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    measure = fake(groups, table, bias=0.05)  # the additive model is 0.05 ms optimistic
    decision = search(groups, table, measure, budget=0.7)
    assert measure.asked == [{"a": 8, "b": 48}, {"a": 8, "b": 40}]  # 0.73 missed; the error carried: 0.64 + 0.05
    assert [e["meets_limit"] for e in decision["trace"]] == [False, True]
    assert decision["channels"] == {"a": 8, "b": 40} and decision["met"] is True
    assert decision["model_ms"] == pytest.approx(0.64) and decision["predicted_ms"] == pytest.approx(0.69)


def test_one_slow_measurement_does_not_leave_the_search_far_past_the_budget():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    # The path: a 32 -> 24 -> 16 -> 8, then b 64 -> 56 -> ... -> 8 (steps 0..10), predicted 1.0 - 0.08 k (k <= 3),
    # then 0.76 - 0.04 (k - 3). The first configuration the model picks (step 4, a 8 b 56, 0.72 ms) is measured 0.3
    # ms slow once: the error carried sends the steps to the floor (step 10, 0.48 ms).
    asked = []

    def measure(channels):
        asked.append(dict(channels))
        slow = 0.3 if len(asked) == 1 else 0.0
        return {"latency_ms": predict_additive(groups, table, channels) + slow, "format": "fp32"}

    jumped = search(groups, table, measure, budget=0.75)
    assert [e["step"] for e in jumped["trace"]] == [4, 10] and jumped["channels"] == {"a": 8, "b": 8}
    asked.clear()
    refined = search(groups, table, measure, budget=0.75, refine=3)  # bisect steps 4..10: 7, 5, then 4 is known
    assert [e["step"] for e in refined["trace"]] == [4, 10, 7, 5]
    assert all(e["meets_limit"] for e in refined["trace"][1:]) and refined["channels"] == {"a": 8, "b": 48}
    assert refined["ratio"] == pytest.approx(1 - 56 / 96) and refined["predicted_ms"] == pytest.approx(0.68)


def test_non_monotone_table_steps_over_a_count_that_is_slower():
    a, b = group("a", 32), group("b", 32)
    # a at 24 channels is slower than unpruned (a width the kernels dislike); 16 is much faster.
    table = {"a": {32: 1.0, 24: 1.2, 16: 0.7, 8: 0.69}, "b": {32: 1.0, 24: 0.95, 16: 0.9, 8: 0.85}}
    assert greedy([a, b], table, {"a": 32, "b": 32}, 0.75) == {"a": 16, "b": 32}
    decision = search([a, b], table, fake([a, b], table), budget=0.75)
    assert decision["channels"] == {"a": 16, "b": 32} and decision["met"] is True
    # A group whose table never gets faster is never pruned: it cannot buy latency.
    flat = {"a": table["a"], "b": {32: 1.0, 24: 1.0, 16: 1.1, 8: 1.0}}
    assert greedy([a, b], flat, {"a": 32, "b": 32}, 0.0) == {"a": 8, "b": 32}


def test_unreachable_budget_is_not_met_and_says_so_in_one_line():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    decision = search(groups, table, fake(groups, table), budget=0.1, margin=0.1)
    assert decision["met"] is False and decision["channels"] == {"a": 8, "b": 8}  # every group at its floor
    message = decision["message"]
    assert "\n" not in message and message.startswith("latency budget 0.1 ms (limit 0.09 ms with margin 0.1) not")
    assert (
        "the closest measured is 0.48 ms" in message
        and "even the fastest configuration the table offers misses it" in message
        and message.endswith("of channels removed)")  # prune_plateau.settled says what ships
    )


def test_out_of_time_decides_on_what_was_measured():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    ticks = iter(range(100))
    decision = search(
        groups, table, fake(groups, table, bias=0.5), budget=0.7, time_budget_s=1, clock=lambda: next(ticks)
    )
    assert len(decision["trace"]) == 1 and decision["out_of_time"] is True and decision["met"] is False
    assert "prune.search_budget_s ran out first" in decision["message"]


def test_counts_respect_round_to():
    groups = [group("a", 64, round_to=16), group("b", 128, round_to=16)]
    table = linear_table(groups, {"a": 0.004, "b": 0.002})
    decision = search(groups, table, fake(groups, table), budget=0.6)
    assert decision["met"] and all(count % 16 == 0 for count in decision["channels"].values())
    assert all(int(count) % 16 == 0 for row in decision["table"].values() for count in row)


def test_the_multiplicative_model_compounds_each_groups_share_and_is_met_where_additive_misses():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    # a at 16 leaves 0.84 of the full model, b at 32 leaves 0.84 too: together 0.7056, not the additive 0.68.
    channels = {"a": 16, "b": 32}
    assert predict_additive(groups, table, channels) == pytest.approx(0.68)
    assert predict_multiplicative(groups, table, channels) == pytest.approx(0.84 * 0.84)
    assert predict_multiplicative(groups, table, {"a": 32, "b": 64}) == FULL_MS

    def measure(channels):  # a machine whose latencies compound
        return {"latency_ms": predict_multiplicative(groups, table, channels), "format": "fp32"}

    # Both thin a to its floor (0.76) first; the additive model then stops at b 48 (0.68, measured 0.76 * 0.92).
    additive = search(groups, table, measure, budget=0.69)
    multiplicative = search(groups, table, measure, budget=0.69, model=predict_multiplicative)
    assert [e["meets_limit"] for e in additive["trace"]] == [False, True]  # optimistic, so a second measurement
    assert [e["meets_limit"] for e in multiplicative["trace"]] == [True]
    assert multiplicative["channels"] == {"a": 8, "b": 40} and multiplicative["model_ms"] == pytest.approx(0.76 * 0.88)
    assert multiplicative["model_ms"] == multiplicative["predicted_ms"]


def test_a_first_meet_with_room_to_spare_carries_the_error_back_to_a_less_pruned_step():
    groups = [group("a", 32), group("b", 64)]
    table = linear_table(groups, {"a": 0.01, "b": 0.005})
    measure = fake(groups, table, bias=-0.05)  # the model predicts 0.05 ms too much
    decision = search(groups, table, measure, budget=0.7)
    # Step 5 (a 8 b 48, predicted 0.68) measures 0.63; the error carried back: step 4 (a 8 b 56, 0.72) measures
    # 0.67, also met, and the path has nothing less pruned predicted under 0.75.
    assert [e["step"] for e in decision["trace"]] == [5, 4] and all(e["meets_limit"] for e in decision["trace"])
    assert decision["channels"] == {"a": 8, "b": 56} and decision["model_ms"] == pytest.approx(0.72)
