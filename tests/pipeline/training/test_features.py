"""Feature distillation: the hint and attention losses on hand computations, their gradients, and the layer pairs."""

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.training import features
from pipeline.training.features import FeatureDistillation, Trainee, attention_loss, attention_map


def test_attention_map_is_the_normalized_channel_mean_of_squares():
    x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 1.0]]]])  # (1, 2 channels, 2, 2)
    # channel mean of squares: [(1+9)/2, (4+0)/2, 0, (1+1)/2] = [5, 2, 0, 1]; its L2 norm is sqrt(30)
    expected = torch.tensor([[5.0, 2.0, 0.0, 1.0]]) / 30**0.5
    assert torch.allclose(attention_map(x), expected)


def test_attention_loss_by_hand_and_its_gradient():
    student = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], requires_grad=True)  # attention [1, 0, 0, 0]
    teacher = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # attention [0, 1, 0, 0]
    loss = attention_loss(student, teacher)
    assert loss.item() == pytest.approx(1 + 1)  # squared distance of [1, 0, 0, 0] and [0, 1, 0, 0], batch of 1
    loss.backward()
    # d loss / d student: at the one nonzero pixel the normalized map does not change with scale: gradient 0 there;
    # the zero pixels' squares have zero derivative too. The whole gradient is 0 (the map is scale invariant).
    assert torch.allclose(student.grad, torch.zeros_like(student.grad))
    other = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], requires_grad=True)  # attention [1, 1, 0, 0] / sqrt 2
    attention_loss(other, teacher).backward()
    assert other.grad[0, 0, 0, 0] > 0 and other.grad[0, 0, 0, 1] < 0  # moves towards the teacher's pixel


def test_hint_is_the_mse_of_the_adapted_student_map_and_trains_the_adapter():
    matching = FeatureDistillation("hint", 2.0, [("t", "s")], teacher_channels=[1], student_channels=[2])
    with torch.no_grad():
        matching.adapters[0].weight.copy_(torch.tensor([[[[1.0]], [[-1.0]]]]))  # 1x1 conv: channel 0 minus 1
    student = torch.tensor([[[[3.0]], [[1.0]]]])  # (1, 2, 1, 1): adapted to 3 - 1 = 2
    teacher = torch.tensor([[[[5.0]]]])
    matching.student_maps["s"], matching.teacher_maps["t"] = student, teacher
    loss = matching()
    assert loss.item() == pytest.approx(2.0 * (2 - 5) ** 2)  # weight x MSE
    loss.backward()
    # d/dw of 2 * (w0 * 3 + w1 * 1 - 5)^2 = 4 * (2 - 5) * [3, 1]
    assert torch.allclose(matching.adapters[0].weight.grad.flatten(), torch.tensor([-36.0, -12.0]))


def test_maps_of_other_sizes_are_pooled_to_the_smaller_one():
    student = torch.ones(1, 1, 4, 4)
    teacher = torch.ones(1, 1, 2, 2)
    assert attention_loss(student, teacher).item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("cnn", (1, 8, 8), ["1", "3"]),  # 8x8 after the second block, 4x4 after the third (before pooling)
        ("resnet8", (3, 32, 32), ["1", "2", "3"]),  # the last block of each stage
        ("resnet20", (3, 32, 32), ["3", "6", "9"]),
    ],
)
def test_stage_boundaries_are_the_last_layer_at_each_resolution(name, shape, expected):
    model = build_model(ModelSpec(name, 4, shape[0], 10, shape[1:]))
    assert features.stage_boundaries(model, torch.zeros(1, *shape)) == expected


def test_layer_pairs_match_the_deepest_boundaries_or_named_layers():
    teacher = build_model(ModelSpec("resnet20", 4, 3, 10, (32, 32)))
    student = build_model(ModelSpec("cnn", 4, 3, 10, (32, 32)))  # two resolutions: 32 and 16
    example = torch.zeros(1, 3, 32, 32)
    assert features.layer_pairs(teacher, student, example, ()) == [("6", "1"), ("9", "3")]
    assert features.layer_pairs(teacher, student, example, ("9:3",)) == [("9", "3")]
    with pytest.raises(ConfigError, match=r"names student layer 'nope', which the student does not have"):
        features.layer_pairs(teacher, student, example, ("9:nope",))
    with pytest.raises(ConfigError, match=r"expected TEACHER_LAYER:STUDENT_LAYER"):
        features.layer_pairs(teacher, student, example, ("9",))


@pytest.mark.parametrize("kind", ["hint", "attention"])
def test_a_trainee_step_updates_the_student_and_the_adapters(kind):
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("resnet8", 4, 1, 10, (8, 8))).eval()
    student = build_model(ModelSpec("cnn", 2, 1, 10, (8, 8)))
    example = torch.randn(4, 1, 8, 8)
    matching = features.build(kind, None, (), teacher, student, example[:1])
    assert matching.weight == features.DEFAULT_WEIGHTS[kind]
    assert len(matching.adapters) == (len(matching.pairs) if kind == "hint" else 0)
    trainee = Trainee(student, matching)
    matching.attach(teacher, student)
    with torch.no_grad():
        teacher(example)
    logits, loss = trainee(example)
    assert logits.shape == (4, 10) and loss.item() > 0
    loss.backward()
    # The layers up to the deepest paired one learn from the feature loss (the classifier after it does not).
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in matching.adapters.parameters())
    matching.detach()
    before = dict(matching.student_maps)
    student(example)
    assert matching.student_maps == before == {}  # detached: nothing captured any more
    assert isinstance(trainee, nn.Module) and {n for n, _ in trainee.named_children()} == {"student", "features"}
