"""Gradual pruning: the schedule, the architecture it ends at, and the history that rebuilds it."""

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.factory import build_model
from pipeline.models.pruning import make_pruner, prune_channels, schedule
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import architecture, load_model, save_model
from stages.prune import Params


def test_schedule_reaches_the_ratio_in_equal_steps_and_splits_the_epochs():
    plan = schedule(0.5, 3, 10)
    assert [step["step"] for step in plan] == [1, 2, 3]
    assert [step["ratio"] for step in plan] == pytest.approx([0.5 / 3, 1 / 3, 0.5])
    assert [step["epochs"] for step in plan] == [3, 3, 4]  # as long as one shot; the last, most pruned, the most
    assert schedule(0.25, 1, 15) == [{"step": 1, "ratio": 0.25, "epochs": 15}]
    assert [step["epochs"] for step in schedule(0.6, 4, 6)] == [1, 1, 2, 2]
    long_last = schedule(0.75, 3, 15, step_epochs=2)  # short fine-tunes between, the whole one after the last
    assert [step["epochs"] for step in long_last] == [2, 2, 15] and long_last[-1]["ratio"] == 0.75


def test_steps_need_a_fine_tune_after_each():
    with pytest.raises(ConfigError, match=r"prune\.steps.*every step is followed by a fine-tune"):
        Params(steps=3, finetune_epochs=2)
    with pytest.raises(ConfigError, match=r"prune\.steps"):
        Params(steps=0)
    assert Params(steps=3, finetune_epochs=3).steps == 3
    with pytest.raises(ConfigError, match=r"prune\.step_epochs"):
        Params(steps=3, step_epochs=0)


def _disturb(model: torch.nn.Module, seed: int) -> None:
    """What a fine-tune between steps does, as far as pruning can tell: the weights move."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num(0.1))


@pytest.mark.parametrize("round_to", [0, 8])
def test_gradual_pruning_ends_at_the_one_shot_architecture_and_replays(tmp_path, round_to):
    spec = ModelSpec("resnet8", 16, 3, 10, (8, 8))
    params = Params(ratio=0.5, round_to=round_to, steps=3, finetune_epochs=3)
    torch.manual_seed(0)
    one_shot = build_model(spec).eval()
    gradual = build_model(spec).eval()
    gradual.load_state_dict(one_shot.state_dict())
    prune_channels(one_shot, spec.example_input(), spec.num_classes, params)

    pruner = make_pruner(gradual, spec.example_input(), spec.num_classes, params, params.ratio, params.steps)
    widths = []
    for step in range(params.steps):
        pruner.step()
        widths.append(sum(m.out_channels for m in gradual.modules() if isinstance(m, torch.nn.Conv2d)))
        _disturb(gradual, step)  # channels are re-ranked on the moved weights at the next step
    assert widths[0] > widths[1] > widths[2]  # channels go step by step
    assert architecture(gradual) == architecture(one_shot)  # the same counts (and latency) as one shot
    if round_to:
        assert all(m.out_channels % round_to == 0 for m in gradual.modules() if isinstance(m, torch.nn.Conv2d))

    save_model(gradual, spec, tmp_path, pruning_history=pruner.pruning_history())
    loaded, _ = load_model(tmp_path)  # every step's removals replayed on a fresh model
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), gradual.eval()(x))


def test_a_larger_ratio_never_keeps_more_channels_when_round_to_would_round_a_layer_to_none():
    # torch-pruning alone left a layer whole where rounding its kept channels down to round_to gave none: resnet8's
    # 16-channel stage kept all 16 at 0.6, and every layer kept all its channels at 0.9 (pipeline/models/pruning.py).
    from pipeline.models.factory import count_macs_and_params

    spec = ModelSpec(name="resnet8", width=16, in_channels=3, num_classes=10, image_size=(8, 8))
    macs, kept = [], []
    for ratio in (0.5, 0.6, 0.7, 0.8, 0.9):
        model = build_model(spec)
        prune_channels(model, spec.example_input(), spec.num_classes, Params(round_to=8), ratio)
        convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c % 8 == 0 and c >= 8 for c in convs), (ratio, convs)
        macs.append(count_macs_and_params(model, spec)[0])
        kept.append(convs)
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0]
    assert kept[-1] == [8] * 9  # at 0.9 every layer at round_to, none left whole
