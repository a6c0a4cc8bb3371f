import types

import pytest

from pipeline.errors import StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.search import prune_depth


class FakeScores:
    """Validation accuracy with a set of blocks gone: each block's own loss, and blocks 2 and 4 together cost far
    more than apart (as two blocks of one path may): a greedy step must weigh a block given the ones chosen."""

    LOSS = {"1": 0.05, "2": 0.01, "4": 0.02, "6": 0.03}

    def __init__(self, student, dataset, seed, prune):
        self.seen = []

    def __call__(self, blocks):
        self.seen.append(tuple(sorted(blocks)))
        accuracy = 0.9 - sum(self.LOSS[name] for name in blocks) - (0.2 if {"2", "4"} <= set(blocks) else 0)
        return {"accuracy": accuracy, "loss": 1 - accuracy}

    def summary(self):
        return {"score": "validation", "scored": len(set(self.seen))}


@pytest.fixture
def resnet14():
    return build_model(ModelSpec("resnet14", 4, 1, 10, (8, 8)))


def test_blocks_are_dropped_one_at_a_time_each_given_the_ones_already_gone(resnet14, monkeypatch):
    monkeypatch.setattr(prune_depth, "ValidationScores", FakeScores)
    depth = prune_depth.chosen_blocks(
        resnet14, None, types.SimpleNamespace(drop_blocks=3, seed=0, target_latency_ms=None), "resnet14 x4"
    )
    # 2 costs least alone; given 2, block 4 costs 0.22, so 6 goes (0.03), then 1 (0.05 against 0.22). Scoring each
    # block alone would have taken 2, 4 and 6.
    assert depth["blocks"] == ["2", "6", "1"]
    assert depth["droppable"] == ["1", "2", "4", "6"]
    assert depth["before"]["accuracy"] == pytest.approx(0.9)
    assert list(depth["steps"][1]["weighed"]) == ["1", "4", "6"]  # the second step weighs the three left
    assert depth["steps"][1]["weighed"]["4"]["accuracy"] == pytest.approx(0.9 - 0.01 - 0.02 - 0.2)
    assert "residual blocks 2, 6, 1 removed (of 4 droppable" in prune_depth.summary(depth, depth["blocks"])
    assert "validation 0.9000 -> 0.8600 with BatchNorm" in prune_depth.summary(depth, ["2", "6"])  # auto's depth 2


def test_auto_orders_every_droppable_block_and_without_a_budget_or_a_block_chooses_none(resnet14, monkeypatch):
    monkeypatch.setattr(prune_depth, "ValidationScores", FakeScores)

    def auto(budget_ms):
        return types.SimpleNamespace(drop_blocks="auto", seed=0, target_latency_ms=budget_ms)

    depth = prune_depth.chosen_blocks(resnet14, None, auto(0.05), "x")
    assert depth["blocks"] == ["2", "6", "1", "4"] and len(depth["steps"]) == 4
    assert prune_depth.chosen_blocks(resnet14, None, auto(None), "x") is None  # nothing to weigh depth against
    cnn = build_model(ModelSpec("cnn", 4, 1, 10, (8, 8)))
    assert prune_depth.chosen_blocks(cnn, None, auto(0.05), "cnn x4") is None


def test_no_drop_blocks_chooses_nothing_and_too_many_is_one_line(resnet14):
    assert (
        prune_depth.chosen_blocks(
            resnet14, None, types.SimpleNamespace(drop_blocks=0, seed=0, target_latency_ms=None), "x"
        )
        is None
    )
    with pytest.raises(StageError) as error:
        prune_depth.chosen_blocks(
            resnet14, None, types.SimpleNamespace(drop_blocks=5, seed=0, target_latency_ms=None), "resnet14 x4"
        )
    assert str(error.value) == (
        "prune.drop_blocks=5: resnet14 x4 has 4 residual blocks with an identity shortcut to drop (1, 2, 4, 6); set "
        "prune.drop_blocks to at most 4 (depth pruning knows the built-in ResNets' and MobileNetV2's blocks)"
    )
    cnn = build_model(ModelSpec("cnn", 4, 1, 10, (8, 8)))
    with pytest.raises(
        StageError,
        match=r"cnn x4 has no residual blocks with an identity shortcut to drop; set prune.drop_blocks to at most 0",
    ):
        prune_depth.chosen_blocks(
            cnn, None, types.SimpleNamespace(drop_blocks=1, seed=0, target_latency_ms=None), "cnn x4"
        )
