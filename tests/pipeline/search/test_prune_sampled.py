import json

import pytest

from pipeline.search.prune_layers import Group, candidate_counts, predict_additive, search_layers
from pipeline.search.prune_sampled import sample_paths, search_sampled

FULL_MS = 1.0


def group(name, channels, importance=1.0, round_to=0):
    return Group(name, candidate_counts(channels, round_to), (importance,) * channels)


# b's channels look unimportant by weight magnitude, but the validation score says b is what matters: the greedy
# magnitude search thins b first, the sampled search should not.
GROUPS = [group("a", 32), group("b", 64, importance=0.1), group("c", 32)]
TABLE = {  # a and c save 0.01 ms per channel removed, b 0.005
    g.name: {n: FULL_MS - {"a": 0.01, "b": 0.005, "c": 0.01}[g.name] * (g.channels - n) for n in g.counts}
    for g in GROUPS
}


def accuracy(channels):
    removed = {g.name: (g.channels - channels[g.name]) / g.channels for g in GROUPS}
    return 0.95 - 0.5 * removed["b"] - 0.05 * removed["a"] - 0.05 * removed["c"]


def fake_score():
    """Validation scores from `accuracy`; remembers every configuration scored."""
    scored = []

    def score(channels):
        scored.append(dict(channels))
        return {"accuracy": accuracy(channels), "loss": 1 - accuracy(channels)}

    score.scored = scored
    return score


def fake_measure(bias=0.0, slow_first=0.0):
    """The additive prediction plus `bias` (and `slow_first` more the first time), remembering what it was asked."""
    asked = []

    def measure(channels):
        asked.append(dict(channels))
        slow = slow_first if len(asked) == 1 else 0.0
        return {"latency_ms": predict_additive(GROUPS, TABLE, channels) + bias + slow, "format": "fp32"}

    measure.asked = asked
    return measure


def search(measure, budget, groups=GROUPS, table=TABLE, **kwargs):
    options = dict(margin=0.0, time_budget_s=1e9, samples=16, seed=0)
    return search_sampled(groups, table, measure, fake_score(), budget, **{**options, **kwargs})


def test_the_best_scoring_configuration_under_the_budget_wins_over_the_magnitude_greedy_one():
    measure = fake_measure()
    decision = search(measure, budget=0.6)
    greedy = search_layers(GROUPS, TABLE, fake_measure(), 0.6, margin=0.0, time_budget_s=1e9)
    assert greedy["channels"]["b"] < 64  # magnitude took b's cheap-looking channels
    assert decision["met"] and decision["search"] == "sampled" and "message" not in decision
    assert predict_additive(GROUPS, TABLE, decision["channels"]) <= 0.6
    assert accuracy(decision["channels"]) > accuracy(greedy["channels"])
    # The pool at the limit held the even and magnitude paths' configurations too; the chosen one was its best.
    pool = decision["rounds"][0]["configurations"]
    assert any("even" in c["paths"] for c in pool) and any("magnitude" in c["paths"] for c in pool)
    assert [c["validation"]["accuracy"] for c in pool] == sorted(
        (c["validation"]["accuracy"] for c in pool), reverse=True
    )
    assert measure.asked == [pool[0]["channels"]] == [decision["channels"]]
    assert decision["validation"]["accuracy"] == pytest.approx(accuracy(decision["channels"]))
    assert sum(len(c["paths"]) for c in pool) == 18  # 16 random + even + magnitude, each configuration once
    json.dumps(decision)


def test_paths_are_seeded_each_on_its_own():
    one = sample_paths(GROUPS, TABLE, samples=3, seed=0)
    two = sample_paths(GROUPS, TABLE, samples=3, seed=0)
    one["random 1"].reach(0.0)  # extending one path first must not change another's steps
    two["random 2"].reach(0.0)
    two["random 1"].reach(0.0)
    one["random 2"].reach(0.0)
    assert one["random 1"].steps == two["random 1"].steps and one["random 2"].steps == two["random 2"].steps
    assert one["random 1"].steps != one["random 2"].steps
    other = sample_paths(GROUPS, TABLE, samples=3, seed=1)
    other["random 1"].reach(0.0)
    assert other["random 1"].steps != one["random 1"].steps
    # even thins the group with the largest share of its channels left: the shares stay close.
    even = one["even"]
    even.reach(0.6)
    shares = [[c[g.name] / g.channels for g in GROUPS] for c in even.steps]
    assert all(max(s) - min(s) <= 0.25 + 1e-9 for s in shares)


def test_a_miss_carries_the_error_to_a_lower_target_and_measures_again():
    measure = fake_measure(bias=0.05)  # the additive model is 0.05 ms optimistic
    decision = search(measure, budget=0.6)
    assert [e["meets_limit"] for e in decision["trace"]] == [False, True]
    first, second = decision["trace"]
    # The first measured 0.05 ms over its prediction: the next target is the limit minus that error.
    assert first["target_ms"] == pytest.approx(0.6) and second["target_ms"] == pytest.approx(0.55)
    assert second["model_ms"] <= second["target_ms"] and decision["channels"] == second["channels"]
    assert decision["predicted_ms"] == pytest.approx(second["model_ms"] + 0.05)


def test_one_slow_measurement_is_refined_by_bisecting_the_target():
    jumped = search(fake_measure(slow_first=0.3), budget=0.6)
    refined = search(fake_measure(slow_first=0.3), budget=0.6, refine=3)
    assert [e["meets_limit"] for e in jumped["trace"]] == [False, True]
    assert jumped["trace"][1]["target_ms"] == pytest.approx(0.3, abs=0.05)  # the 0.3 ms error carried
    targets = [r["target_ms"] for r in refined["rounds"]]
    assert len(targets) == 5 and targets[2] == pytest.approx((targets[0] + targets[1]) / 2)
    assert refined["met"] and accuracy(refined["channels"]) > accuracy(jumped["channels"])
    assert predict_additive(GROUPS, TABLE, refined["channels"]) <= 0.6


def test_a_miss_larger_than_the_limit_carries_the_target_to_the_floor_not_below_zero():
    decision = search(fake_measure(slow_first=0.9), budget=0.6)  # the first measurement 0.9 ms over its prediction
    targets = [r["target_ms"] for r in decision["rounds"]]
    assert targets[:2] == [pytest.approx(0.6), 0.0] and min(targets) >= 0  # not 0.6 - 0.9
    assert decision["met"] and decision["channels"] == {"a": 8, "b": 8, "c": 8}  # at 0 ms every path is at its floor


def test_unreachable_budget_is_not_met_and_says_so_in_one_line():
    measure = fake_measure()
    decision = search(measure, budget=0.1, margin=0.1)
    floor = {"a": 8, "b": 8, "c": 8}
    assert decision["met"] is False and decision["channels"] == floor and measure.asked == [floor]
    message = decision["message"]
    assert "\n" not in message and message.startswith("latency budget 0.1 ms (limit 0.09 ms with margin 0.1) not")
    assert "not reached by the sampled search" in message and "the closest measured is 0.24 ms" in message


def test_out_of_time_decides_on_what_was_measured():
    ticks = iter(range(100))
    decision = search(fake_measure(bias=0.5), budget=0.6, time_budget_s=1, clock=lambda: next(ticks))
    assert len(decision["trace"]) == 1 and decision["out_of_time"] is True and decision["met"] is False
    assert "prune.search_budget_s ran out first" in decision["message"]


def test_counts_respect_round_to():
    groups = [group("a", 64, round_to=16), group("b", 128, round_to=16)]
    table = {g.name: {n: FULL_MS - 0.003 * (g.channels - n) for n in g.counts} for g in groups}

    def measure(channels):
        return {"latency_ms": predict_additive(groups, table, channels), "format": "fp32"}

    def score(channels):
        return {"accuracy": sum(channels.values()) / 192, "loss": 0.0}

    decision = search_sampled(groups, table, measure, score, 0.6, 0.0, 1e9, samples=4, seed=0)
    assert decision["met"]
    configurations = [c["channels"] for r in decision["rounds"] for c in r["configurations"]]
    assert all(count % 16 == 0 for channels in configurations for count in channels.values())


def test_a_first_meet_with_room_to_spare_carries_the_error_up_to_a_higher_target():
    measure = fake_measure(bias=-0.05)  # the model predicts 0.05 ms too much
    decision = search(measure, budget=0.6)
    targets = [r["target_ms"] for r in decision["rounds"]]
    assert targets[:2] == [pytest.approx(0.6), pytest.approx(0.6 + 0.05)]
    assert all(e["meets_limit"] for e in decision["trace"]) and len(decision["trace"]) == 2
    first, higher = decision["trace"]
    assert accuracy(higher["channels"]) > accuracy(first["channels"]) and decision["channels"] == higher["channels"]
    assert 0.6 < decision["model_ms"] <= 0.65 and decision["predicted_ms"] <= 0.6
