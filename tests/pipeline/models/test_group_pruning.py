import pytest
import torch

from pipeline.models.factory import build_model
from pipeline.models.group_pruning import GroupPruner, channel_counts, group_importance, prune_groups, step_counts
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import architecture, load_model, save_model
from pipeline.search.prune_layers import share_removed
from stages.prune import Params


def test_per_group_counts_are_applied_exactly_and_replay_from_the_saved_history(tmp_path):
    spec = ModelSpec("resnet8", 16, 3, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    full = channel_counts(model, spec.example_input(), spec.num_classes, Params())
    # Residual-coupled convs are one group: the stem with stage 1's sum, each later stage's shortcut with its sum.
    assert full == {"0.0": 16, "1.conv1": 16, "2.conv1": 32, "2.shortcut.0": 32, "3.conv1": 64, "3.shortcut.0": 64}
    chosen = {"0.0": 8, "1.conv1": 16, "2.conv1": 8, "2.shortcut.0": 24, "3.conv1": 40, "3.shortcut.0": 48}
    history = prune_groups(model, spec.example_input(), spec.num_classes, Params(), chosen)
    assert channel_counts(model, spec.example_input(), spec.num_classes, Params()) == chosen
    assert model[1].conv1.out_channels == 16 and model[3].conv1.out_channels == 40 and model[3].conv2.out_channels == 48
    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_the_least_important_channels_of_a_group_go():
    spec = ModelSpec("cnn", 8, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    ascending = group_importance(model, spec.example_input(), spec.num_classes, Params())
    assert set(ascending) == {"0.0", "1.0", "3.0"} and all(s == sorted(s) for s in ascending.values())
    scores = GroupPruner(model, spec.example_input(), spec.num_classes, Params(), {}).scores(model[1][0])
    weight = model[1][0].weight.detach().clone()
    prune_groups(model, spec.example_input(), spec.num_classes, Params(), {"1.0": 8})
    assert model[1][0].out_channels == 8 and model[3][0].in_channels == 8 and model[0][0].out_channels == 8
    kept = [i for i in range(16) if any(torch.equal(weight[i], w) for w in model[1][0].weight.detach())]
    assert kept == sorted(torch.topk(scores, 8).indices.tolist())  # the 8 most important survive, in order


def test_an_unknown_group_is_one_line():
    spec = ModelSpec("cnn", 8, 1, 10, (8, 8))
    with pytest.raises(ValueError, match=r"no prunable group 'nope' in this model: known 3.0, 1.0, 0.0"):
        prune_groups(build_model(spec), spec.example_input(), spec.num_classes, Params(), {"nope": 8})


@pytest.mark.parametrize(
    ("round_to", "expected"),
    [
        (0, [{"a": 48, "b": 32, "c": 50}, {"a": 32, "b": 32, "c": 35}, {"a": 16, "b": 32, "c": 20}]),
        (8, [{"a": 48, "b": 32, "c": 56}, {"a": 32, "b": 32, "c": 40}, {"a": 16, "b": 32, "c": 20}]),
    ],
)
def test_gradual_counts_go_an_equal_share_a_step_rounded_up_and_end_on_the_chosen_counts(round_to, expected):
    full, final = {"a": 64, "b": 32, "c": 64}, {"a": 16, "b": 32, "c": 20}
    assert [step_counts(full, final, k, 3, round_to) for k in (1, 2, 3)] == expected


def test_per_group_counts_reached_in_steps_match_one_shot_and_replay(tmp_path):
    spec = ModelSpec("resnet8", 16, 3, 10, (8, 8))
    torch.manual_seed(0)
    one_shot, gradual = build_model(spec).eval(), build_model(spec).eval()
    gradual.load_state_dict(one_shot.state_dict())
    chosen = {"0.0": 8, "2.conv1": 8, "3.conv1": 40, "3.shortcut.0": 16}
    prune_groups(one_shot, spec.example_input(), spec.num_classes, Params(), chosen)
    pruner = GroupPruner(gradual, spec.example_input(), spec.num_classes, Params(), chosen, steps=3)
    counts, shares = [], []
    for _ in range(3):
        pruner.step()
        counts.append(channel_counts(gradual, spec.example_input(), spec.num_classes, Params()))
        with torch.no_grad():  # as a fine-tune would: the next step ranks the channels on the moved weights
            gradual[3].conv1.weight.mul_(torch.linspace(2, 0.5, gradual[3].conv1.out_channels).view(-1, 1, 1, 1))
        shares.append(share_removed(pruner.full, pruner.counts()))
    assert [c["3.shortcut.0"] for c in counts] == [48, 32, 16] and [c["0.0"] for c in counts] == [14, 11, 8]
    full, kept = 16 + 32 + 64 + 64, 8 + 8 + 40 + 16
    assert shares[0] < shares[1] < shares[2] == pytest.approx(1 - kept / full)
    assert architecture(gradual) == architecture(one_shot)  # the same counts (and latency) as one shot
    save_model(gradual, spec, tmp_path, pruning_history=pruner.pruning_history())
    loaded, _ = load_model(tmp_path)  # every step's removals replayed on a fresh model
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), gradual(x))
