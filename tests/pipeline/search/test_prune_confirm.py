"""A met budget's rivals timed again: a burst over the first repeats no longer decides how much is pruned."""

import json

import pytest

from pipeline.search.prune_confirm import confirmed, rivals
from pipeline.search.prune_layers import least_pruned
from pipeline.search.prune_plateau import ROUNDS
from pipeline.search.prune_ratio import least_ratio

LIMIT = 0.0419


def step(number: int, ratio: float, runs: list[float]) -> dict:
    """A per-layer trace entry: its greedy step, share removed, channels, and repeats (the median counts)."""
    median = sorted(runs)[len(runs) // 2]
    channels = {"a": 16 - number, "b": 32 - 2 * number}
    return {"step": number, "ratio": ratio, "channels": channels, "model_ms": median, "latency_ms": median,
            "latency_runs_ms": runs, "meets_limit": median <= LIMIT}  # fmt: skip


def decision(trace: list[dict], chosen: dict, **more) -> dict:
    return {"search": "per_layer", "ratio": chosen["ratio"], "channels": chosen["channels"], "met": True,
            "limit_ms": LIMIT, "predicted_ms": chosen["latency_ms"], "model_ms": chosen["model_ms"],
            "out_of_time": False, "trace": trace, **more}  # fmt: skip


class Retime:
    """Timing again at fixed p50s per setting; records each round's settings."""

    def __init__(self, latency_by_ratio: dict[float, float], trace: list[dict]):
        self.by_setting = {json.dumps(e["channels"], sort_keys=True): latency_by_ratio[e["ratio"]] for e in trace}
        self.rounds: list[list] = []

    def __call__(self, settings: list) -> list[float]:
        self.rounds.append(settings)
        return [self.by_setting[json.dumps(s, sort_keys=True)] for s in settings]


# The CIFAR-10 search that a burst misled (BENCHMARKS.md): the shallower resnet8_s2 unpruned measured 0.0357 ms in
# its first repeat and 0.0579, 0.0548 in the next two; the search went on to remove 46% of its channels.
BURST = [
    step(0, 0.0, [0.0357, 0.0579, 0.0548]),
    step(5, 0.269, [0.0309, 0.0449, 0.0452]),
    step(7, 0.5, [0.0297, 0.0316, 0.0255]),
    step(6, 0.4615, [0.0286, 0.0284, 0.0300]),
]


def test_a_less_pruned_configuration_that_meets_the_limit_in_interleaved_rounds_ships_instead():
    searched = decision(BURST, BURST[3])
    chosen, found = rivals(searched, least_pruned)
    assert chosen is BURST[3] and [e["step"] for e in found] == [0, 5]  # step 7 met the limit: no rival
    later = step(8, 0.6, [0.0300, 0.0450, 0.0460])  # missed with a repeat under, but the search prefers its choice
    assert [e["step"] for e in rivals(decision([*BURST, later], BURST[3]), least_pruned)[1]] == [0, 5]
    retime = Retime({0.0: 0.0360, 0.269: 0.0310, 0.4615: 0.0286, 0.5: 0.027}, BURST)
    result = confirmed(searched, retime, least_pruned)
    assert len(retime.rounds) == ROUNDS and all(len(r) == 3 for r in retime.rounds)
    assert result["ratio"] == 0.0 and result["channels"] == BURST[0]["channels"]
    assert result["predicted_ms"] == pytest.approx(0.0360) and result["met"]
    record = result["confirmed"]
    assert record["searched_ratio"] == 0.4615 and record["chosen_ratio"] == 0.0
    assert [row["meets_limit"] for row in record["entries"]] == [True, True, True]
    assert record["message"] == (
        "0.0% of channels removed met the 0.0419 ms limit in 5 interleaved rounds (0.036 ms; its first repeats "
        "0.0357, 0.0579, 0.0548), so it is used instead of the 46.2% the search chose"
    )


def test_the_choice_stands_when_the_rivals_miss_again_or_none_had_a_repeat_under_the_limit():
    searched = decision(BURST, BURST[3])
    retime = Retime({0.0: 0.0550, 0.269: 0.0440, 0.4615: 0.0450, 0.5: 0.027}, BURST)
    result = confirmed(searched, retime, least_pruned)  # the chosen one misses too in the rounds: it stays
    assert result["ratio"] == 0.4615 and result["channels"] == BURST[3]["channels"]
    assert "message" not in result["confirmed"] and result["predicted_ms"] == BURST[3]["latency_ms"]

    slow = [step(0, 0.0, [0.050, 0.055, 0.060]), BURST[3]]  # no repeat under the limit: over it, not a burst
    never = Retime({}, [])
    assert confirmed(decision(slow, slow[1]), never, least_pruned) == decision(slow, slow[1])
    assert never.rounds == []
    assert confirmed(decision(BURST, BURST[3], out_of_time=True), never, least_pruned)["ratio"] == 0.4615


def test_the_uniform_search_is_confirmed_by_ratio():
    trace = [
        {"ratio": 0.0, "latency_ms": 0.050, "latency_runs_ms": [0.040, 0.050, 0.052], "meets_limit": False},
        {"ratio": 0.3, "latency_ms": 0.041, "latency_runs_ms": [0.041, 0.040, 0.042], "meets_limit": True},
    ]
    searched = {"ratio": 0.3, "met": True, "limit_ms": LIMIT, "predicted_ms": 0.041, "out_of_time": False,
                "trace": trace}  # fmt: skip
    result = confirmed(searched, lambda settings: [0.039 if s == 0.0 else 0.041 for s in settings], least_ratio)
    assert result["ratio"] == 0.0 and "channels" not in result and result["confirmed"]["chosen_ratio"] == 0.0
