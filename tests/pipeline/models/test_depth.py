import json

import pytest
import torch

from pipeline.models.depth import drop_blocks, droppable_blocks
from pipeline.models.factory import build_model
from pipeline.models.pruning import prune_channels
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import load_model, save_model
from stages.prune import Params


def test_the_droppable_blocks_are_those_with_an_identity_shortcut():
    # resnet14: two blocks a stage; the first of stages 2 and 3 changes stride and width (a projection shortcut).
    assert droppable_blocks(build_model(ModelSpec("resnet14", 4, 1, 10, (8, 8)))) == ["1", "2", "4", "6"]
    assert droppable_blocks(build_model(ModelSpec("resnet8_s2", 4, 1, 10, (8, 8)))) == ["1"]
    mobilenet = droppable_blocks(build_model(ModelSpec("mobilenetv2", 8, 1, 10, (8, 8))))
    assert mobilenet and all(name.isdigit() for name in mobilenet)  # the inverted residuals with their sum
    assert droppable_blocks(build_model(ModelSpec("cnn", 4, 1, 10, (8, 8)))) == []


def test_a_dropped_block_is_the_identity_and_every_other_module_keeps_its_name():
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet14", 4, 1, 10, (8, 8))).eval()
    names = set(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    drop_blocks(model, ["2", "4"])
    assert isinstance(model[2], torch.nn.Identity) and isinstance(model[4], torch.nn.Identity)
    assert set(model.state_dict()) == {name for name in names if not name.startswith(("2.", "4."))}
    after = model(x)
    assert after.shape == before.shape and not torch.equal(after, before)
    assert droppable_blocks(model) == ["1", "6"]


def test_a_block_that_cannot_be_dropped_is_named_with_the_ones_that_can():
    model = build_model(ModelSpec("resnet14", 4, 1, 10, (8, 8)))
    with pytest.raises(ValueError, match=r"block '3' cannot be dropped from this model: droppable blocks 1, 2, 4, 6"):
        drop_blocks(model, ["3"])  # the first block of stage 2: stride 2 and a projection
    with pytest.raises(ValueError, match=r"droppable blocks none"):
        drop_blocks(build_model(ModelSpec("cnn", 4, 1, 10, (8, 8))), ["0"])


def test_a_model_with_dropped_blocks_and_pruned_channels_round_trips(tmp_path):
    spec = ModelSpec("resnet14", 8, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    drop_blocks(model, ["1"])
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))  # on the shallower one
    save_model(model, spec, tmp_path, pruning_history=history, dropped_blocks=["1"])
    assert json.loads((tmp_path / "model.json").read_text())["dropped_blocks"] == ["1"]
    loaded, _ = load_model(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert isinstance(loaded[1], torch.nn.Identity) and torch.equal(loaded(x), model(x))
    # Without dropped blocks model.json is what it was before depth pruning existed: cached entries keep their bytes.
    save_model(build_model(spec), spec, tmp_path)
    assert set(json.loads((tmp_path / "model.json").read_text())) == {"spec", "pruning_history"}
