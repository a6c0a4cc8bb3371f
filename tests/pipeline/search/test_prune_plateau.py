import pytest

from pipeline.search.prune_layers import least_pruned
from pipeline.search.prune_plateau import ROUNDS, contenders, interleaved, settled
from pipeline.search.prune_ratio import decide, least_ratio
from pipeline.search.prune_sampled import best_scored


def entry(ratio: float, latency_ms: float, **more) -> dict:
    return {"ratio": ratio, "latency_ms": latency_ms, "meets_limit": False, **more}


def unmet(trace: list[dict]) -> dict:
    """The uniform search's decision on a trace where nothing met a 0.01 ms budget: the fastest, marked not met."""
    return decide(trace, budget_ms=0.01, limit=0.01, margin=0.0, out_of_time=False, seconds=1.0)


class Drifting:
    """Re-timing on a machine that drifts: every round is `drift` slower than the last, for every setting alike;
    `offsets[setting][round]` is added on top. Records each round's order."""

    def __init__(self, base: dict, offsets: dict | None = None, drift: float = 0.01):
        self.base, self.offsets, self.drift = base, offsets or {}, drift
        self.rounds: list[list] = []

    def __call__(self, settings: list) -> list[float]:
        index = len(self.rounds)
        self.rounds.append(list(settings))
        return [self.base[s] * (1 + self.drift * index) + self.offsets.get(s, [0.0] * ROUNDS)[index] for s in settings]


# The CIFAR-10 trace that decided on noise (BENCHMARKS.md): flat from 0.3 to 0.9.
PLATEAU = [
    entry(0.0, 0.0744),
    entry(0.1, 0.0610),
    entry(0.2, 0.0560),
    entry(0.3, 0.0460),
    entry(0.4, 0.0450),
    entry(0.5, 0.0470),
    entry(0.6, 0.0440),
    entry(0.7, 0.0430),
    entry(0.8, 0.0450),
    entry(0.9, 0.0440),
]


def test_contenders_are_the_distinct_configurations_within_the_window_of_the_fastest():
    near = contenders([*PLATEAU, entry(0.4, 0.0451)])  # a ratio measured twice counts once
    assert [e["ratio"] for e in near] == [0.7, 0.6, 0.9, 0.4, 0.8, 0.3, 0.5]  # 0.2: 0.056 > 1.25 * 0.043
    # A median in a burst: its fastest repeat decides whether it is timed again.
    burst = [entry(0.8, 0.0380, latency_runs_ms=[0.0405, 0.0379, 0.0380]), entry(0.4, 0.0620)]
    assert [e["ratio"] for e in contenders(burst)] == [0.8]
    burst[1]["latency_runs_ms"] = [0.0658, 0.0620, 0.0470]
    assert [e["ratio"] for e in contenders(burst)] == [0.8, 0.4]


def test_rounds_are_interleaved_in_rotated_order():
    near = [entry(0.3, 1.0), entry(0.4, 2.0), entry(0.5, 3.0)]
    retime = Drifting({0.3: 1.0, 0.4: 2.0, 0.5: 3.0}, drift=0.0)
    times = interleaved(near, retime, rounds=3)
    assert retime.rounds == [[0.3, 0.4, 0.5], [0.4, 0.5, 0.3], [0.5, 0.3, 0.4]]
    assert times == [[1.0] * 3, [2.0] * 3, [3.0] * 3]  # per entry, in round order, whatever the order within


def test_on_a_flat_plateau_the_least_pruned_as_fast_as_the_fastest_ships():
    # Re-timed: 0.3 is 5% slower in every round (a real difference); 0.4 trades places with 0.7 round by round.
    base = {ratio: 0.045 for ratio in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}
    offsets = {0.3: [0.00225] * ROUNDS, 0.4: [0.001, -0.001, 0.001, -0.001, 0.0], 0.5: [0.0005] * ROUNDS}
    retime = Drifting(base, {**offsets, 0.6: [0.0001] * ROUNDS, 0.8: [0.0002] * ROUNDS, 0.9: [0.0003] * ROUNDS})
    decision = settled(unmet(PLATEAU), retime, least_ratio)
    assert len(retime.rounds) == ROUNDS and all(sorted(r) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] for r in retime.rounds)
    rows = {row["ratio"]: row for row in decision["plateau"]["contenders"]}
    assert rows[0.3]["slower_every_round"] and rows[0.5]["slower_every_round"]
    assert not rows[0.4]["slower_every_round"] and not rows[0.7]["slower_every_round"]
    assert decision["ratio"] == decision["plateau"]["chosen_ratio"] == 0.4
    assert decision["predicted_ms"] == 0.045  # what the search measured for it, as for any decision
    assert decision["met"] is False
    message = decision["message"]
    assert message.startswith("latency budget 0.01 ms") and "the closest measured is 0.043 ms at ratio 0.7;" in message
    assert (
        "the 7 configurations measured within 25% of it, timed again in 5 interleaved rounds: 2 not slower in every "
        "round than the fastest there (70.0% removed, 0.0459 ms)"
    ) in message
    assert message.endswith("so the least pruned of those is used: 40.0% of channels removed, 0.046 ms in those rounds")


def test_the_fastest_ships_when_every_other_contender_is_slower_in_every_round():
    base = {0.6: 0.046, 0.7: 0.043, 0.9: 0.0435, 0.4: 0.047, 0.8: 0.044, 0.3: 0.048, 0.5: 0.0472}
    decision = settled(unmet(PLATEAU), Drifting(base, drift=0.05), least_ratio)  # drift 5% a round: no matter
    assert decision["ratio"] == 0.7 and decision["plateau"]["fastest_ratio"] == 0.7
    assert decision["message"].endswith(
        "which is used (the 7 configurations measured within 25% of it, timed again in 5 interleaved rounds: 1 not "
        "slower in every round than the fastest there (70.0% removed, 0.0473 ms), and it is the least pruned)"
    )


def test_a_lone_contender_is_not_timed_again():
    def never(settings):
        raise AssertionError(f"re-timed {settings}")

    decision = unmet([entry(0.0, 0.10), entry(0.5, 0.05)])
    assert settled(decision, never, least_ratio) == {**decision, "message": f"{decision['message']}, which is used"}


def test_a_search_out_of_time_ships_the_fastest_it_measured_without_timing_again():
    def never(settings):
        raise AssertionError(f"re-timed {settings}")

    decision = {**unmet(PLATEAU), "out_of_time": True}  # contenders aplenty, but prune.search_budget_s bounds it
    concluded = settled(decision, never, least_ratio)
    assert concluded == {**decision, "message": f"{decision['message']}, which is used"} and concluded["ratio"] == 0.7


def test_a_per_layer_decision_takes_the_chosen_configurations_channels():
    def configuration(step, ratio, latency_ms, a):
        return entry(ratio, latency_ms, step=step, channels={"a": a, "b": 16}, model_ms=latency_ms * 0.9)

    trace = [configuration(2, 0.25, 0.050, 8), configuration(1, 0.125, 0.051, 12), configuration(0, 0.0, 0.080, 16)]
    decision = {**unmet(trace), "search": "per_layer", "channels": {"a": 8, "b": 16}, "model_ms": 0.045}
    calls = []

    def by_channels(settings):  # a: 12 trades places with a: 8 round by round
        calls.append(settings)
        wobble = 0.001 if len(calls) % 2 else -0.001
        return [0.050 if s["a"] == 8 else 0.050 + wobble for s in settings]

    settled_decision = settled(decision, by_channels, least_pruned)
    assert settled_decision["channels"] == {"a": 12, "b": 16} and settled_decision["ratio"] == 0.125
    assert settled_decision["model_ms"] == pytest.approx(0.051 * 0.9)
    assert "so the least pruned of those is used: 12.5% of channels removed" in settled_decision["message"]


def test_the_sampled_search_prefers_the_best_scoring_of_those_as_fast():
    def scored(ratio, latency_ms, accuracy):
        channels = {"a": int(16 * (1 - ratio))}
        return entry(
            ratio, latency_ms, channels=channels, model_ms=latency_ms, validation={"accuracy": accuracy, "loss": 1.0}
        )

    trace = [scored(0.25, 0.050, 0.80), scored(0.5, 0.049, 0.90), scored(0.0, 0.050, 0.70)]
    decision = {**unmet(trace), "search": "sampled", "channels": trace[1]["channels"], "model_ms": 0.049}
    chosen = settled(decision, lambda settings: [0.05] * len(settings), best_scored)  # all tie: none slower
    assert chosen["ratio"] == 0.5 and "it is the best-scoring on validation" in chosen["message"]


def test_the_report_shows_each_contenders_rounds_and_which_was_chosen():
    from pipeline.reporting.latency_search_sections import plateau_lines

    base = {0.6: 0.046, 0.7: 0.043, 0.9: 0.0435, 0.4: 0.043, 0.8: 0.044, 0.3: 0.048, 0.5: 0.0472}
    decision = settled(unmet(PLATEAU), Drifting(base, drift=0.0), least_ratio)
    lines = plateau_lines(decision)
    assert lines[1].startswith("Where no candidate meets the budget, those whose fastest repeat was within 25% of")
    assert lines[3] == "| channels removed | p50 ms in 5 interleaved rounds | median | slower every round |  |"
    # 40% and 70% tie on every round: the less pruned counts as the fastest too
    assert "| 40.0% | 0.0430 0.0430 0.0430 0.0430 0.0430 | 0.0430 | no | fastest, **chosen** |" in lines
    assert "| 70.0% | 0.0430 0.0430 0.0430 0.0430 0.0430 | 0.0430 | no |  |" in lines
    assert "| 60.0% | 0.0460 0.0460 0.0460 0.0460 0.0460 | 0.0460 | yes |  |" in lines
    assert plateau_lines(unmet(PLATEAU)) == []  # no re-timing, no section
