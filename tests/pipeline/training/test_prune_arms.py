"""prune.drop_blocks auto: which depths are tried and which is kept, with arms whose scores are given."""

import pytest

from pipeline.training.prune_arms import Arm, deeper_while_it_pays, stop_reason

BUDGET = 0.05


def arm(count: int, ratio: float, achieved_ms: float, validation: float) -> Arm:
    scores = {"validation_accuracy": validation, "test_accuracy": validation - 0.01}
    steps = [{"after_finetune": scores, "macs": 1000 - count, "params": 100}]
    search = {"met": achieved_ms <= BUDGET, "predicted_ms": achieved_ms, "achieved": {"latency_ms": achieved_ms}}
    return Arm(
        [str(b) for b in range(count)],
        None,
        {**search, "achieved": {**search["achieved"], "format": "fp32"}},
        ratio,
        [],
        steps,
        [],
    )


def descend(*arms: Arm, budget_ms: float = BUDGET) -> tuple[list[int], int, str]:
    """deeper_while_it_pays over `arms` (one per depth): the depths it trained, the one kept, why it stopped."""
    trained = []

    def train(count: int) -> Arm:
        trained.append(count)
        return arms[count]

    _, chosen, stopped = deeper_while_it_pays(len(arms) - 1, budget_ms, train)
    return trained, chosen, stopped


def test_a_student_that_fits_whole_is_not_cut_deeper():
    trained, chosen, stopped = descend(arm(0, 0.0, 0.04, 0.80), arm(1, 0.0, 0.03, 0.78))
    assert trained == [0] and chosen == 0
    assert stopped == "without 0 block(s) every channel fit the budget: a deeper cut only removes capacity"


def test_it_goes_deeper_while_depth_pays_and_stops_past_the_peak():
    arms = [arm(0, 0.6, 0.049, 0.70), arm(1, 0.3, 0.045, 0.76), arm(2, 0.1, 0.044, 0.74), arm(3, 0.0, 0.03, 0.6)]
    trained, chosen, stopped = descend(*arms)
    assert trained == [0, 1, 2] and chosen == 1
    assert (
        stopped == "without 2 block(s) validation 0.7400, under the 0.7600 without 1 within the budget: past the peak"
    )


def test_a_missed_budget_never_stops_the_descent_and_the_deepest_may_win():
    arms = [arm(0, 0.9, 0.08, 0.70), arm(1, 0.9, 0.06, 0.72), arm(2, 0.5, 0.04, 0.65)]
    trained, chosen, stopped = descend(*arms)
    assert trained == [0, 1, 2] and chosen == 2 and stopped == "every depth tried, 0 to 2 blocks"


def test_every_depth_over_the_budget_keeps_the_fastest_and_a_tie_keeps_the_shallower():
    assert descend(arm(0, 0.9, 0.08, 0.70), arm(1, 0.9, 0.06, 0.60))[1] == 1
    trained, chosen, _ = descend(arm(0, 0.5, 0.045, 0.75), arm(1, 0.2, 0.04, 0.75))
    assert trained == [0, 1] and chosen == 0


def test_a_less_accurate_arm_over_the_budget_or_after_a_missed_one_goes_on():
    assert stop_reason([arm(0, 0.5, 0.04, 0.75).record(), arm(1, 0.2, 0.06, 0.70).record()], BUDGET) is None
    assert stop_reason([arm(0, 0.9, 0.07, 0.80).record(), arm(1, 0.2, 0.04, 0.70).record()], BUDGET) is None
    record = arm(1, 0.25, 0.045, 0.7).record()
    assert record["blocks"] == ["0"] and record["achieved_ms"] == pytest.approx(0.045) and record["format"] == "fp32"
