"""An ONNX teacher gives the training loop the same logits, and so the same distillation loss, as the PyTorch
teacher it was exported from, whatever input convention the file expects."""

import onnx
import pytest
import torch

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime import onnx_counts, onnx_teacher
from pipeline.training.augment import Augmentation, augment, normalize
from pipeline.training.losses import kd_loss
from pipeline.training.onnx_teacher import OnnxTeacher
from tests.onnx_teachers import export_foreign

SPEC = ModelSpec("cnn", 8, 3, 5, (8, 8))
DATA_NORM = ([0.45, 0.5, 0.55], [0.2, 0.25, 0.3])
IMAGE_SHAPE = (3, 8, 8)
CONVENTIONS = {
    "pipeline's own": dict(layout="nchw", scale=1 / 255, mean=None, std=None),
    "keras nhwc 0..255": dict(layout="nhwc", scale=1.0, mean=[0.0], std=[1.0]),
    "imagenet nhwc": dict(layout="nhwc", scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    "nchw 0..255 mean/std": dict(layout="nchw", scale=1.0, mean=[120.0, 110.0, 100.0], std=[60.0, 58.0, 57.0]),
}


@pytest.fixture(scope="module")
def torch_teacher():
    torch.manual_seed(0)
    return build_model(SPEC).eval()


def augmented_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalized, augmented batch as the training loop makes one, and its labels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (16, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)
    draws = Augmentation.draw(16, 1, True, generator)
    x = normalize(augment(pixels, 1, draws), *DATA_NORM, memory_format=torch.channels_last)
    return x, torch.randint(0, SPEC.num_classes, (16,), generator=generator)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_onnx_teacher_matches_the_pytorch_teachers_kd_loss(torch_teacher, tmp_path, convention):
    settings = CONVENTIONS[convention]
    source = export_foreign(torch_teacher, tmp_path / "foreign.onnx", IMAGE_SHAPE, **settings, data_norm=DATA_NORM)
    wrapped = tmp_path / "teacher.onnx"
    onnx_teacher.prepare(source, wrapped, onnx_teacher.Settings(**settings), DATA_NORM, IMAGE_SHAPE, SPEC.num_classes)
    teacher = OnnxTeacher(wrapped, threads=1)
    x, labels = augmented_batch()
    student_logits = torch.randn(16, SPEC.num_classes, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_logits = torch_teacher(x)
        actual_logits = teacher(x)
    torch.testing.assert_close(actual_logits, expected_logits, atol=1e-4, rtol=1e-4)
    expected = kd_loss(student_logits, expected_logits, labels, temperature=4.0, alpha=0.9)
    actual = kd_loss(student_logits, actual_logits, labels, temperature=4.0, alpha=0.9)
    for part in ("total", "kd"):
        assert actual[part].item() == pytest.approx(expected[part].item(), abs=1e-4)


def test_a_softmax_teacher_distills_as_its_logits_would(torch_teacher, tmp_path):
    """A model ending in a softmax (as Keras classifiers often do) with onnx_output=probabilities: the log of its
    probabilities gives the KD loss of the logits (softmax is shift-invariant), and the same predictions."""
    softmaxed = torch.nn.Sequential(torch_teacher, torch.nn.Softmax(dim=1)).eval()
    source = export_foreign(softmaxed, tmp_path / "softmax.onnx", IMAGE_SHAPE, data_norm=DATA_NORM)
    settings = onnx_teacher.Settings(output="probabilities")
    onnx_teacher.prepare(source, tmp_path / "teacher.onnx", settings, DATA_NORM, IMAGE_SHAPE, SPEC.num_classes)
    x, labels = augmented_batch()
    student_logits = torch.randn(16, SPEC.num_classes, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = kd_loss(student_logits, torch_teacher(x), labels, temperature=4.0, alpha=0.9)
        teacher_logits = OnnxTeacher(tmp_path / "teacher.onnx")(x)
    actual = kd_loss(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.9)
    assert actual["kd"].item() == pytest.approx(expected["kd"].item(), abs=1e-4)
    assert torch.equal(teacher_logits.argmax(1), torch_teacher(x).argmax(1))


def test_wrong_convention_gives_other_logits(torch_teacher, tmp_path):
    """The preprocessing settings matter: the NHWC 0..255 file read as NCHW [0, 1] does not even fit the data."""
    source = export_foreign(
        torch_teacher,
        tmp_path / "foreign.onnx",
        IMAGE_SHAPE,
        layout="nchw",
        scale=1.0,
        mean=[0.0],
        std=[1.0],
        data_norm=DATA_NORM,
    )
    right, wrong = tmp_path / "right.onnx", tmp_path / "wrong.onnx"
    right_settings, wrong_settings = onnx_teacher.Settings("nchw", 1.0, (0.0,), (1.0,)), onnx_teacher.Settings()
    onnx_teacher.prepare(source, right, right_settings, DATA_NORM, IMAGE_SHAPE, SPEC.num_classes)
    onnx_teacher.prepare(source, wrong, wrong_settings, DATA_NORM, IMAGE_SHAPE, SPEC.num_classes)
    x, _ = augmented_batch()
    assert not torch.allclose(OnnxTeacher(right)(x), OnnxTeacher(wrong)(x), atol=1e-3)


def test_macs_are_the_convolutions_and_linear_layers_of_one_image(torch_teacher, tmp_path):
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            macs.append(output.numel() * module.weight[0].numel())

    hooks = [module.register_forward_hook(count) for module in torch_teacher.modules()]
    with torch.no_grad():
        torch_teacher(torch.zeros(1, *IMAGE_SHAPE))
    for hook in hooks:
        hook.remove()
    model = onnx.load(str(export_foreign(torch_teacher, tmp_path / "foreign.onnx", IMAGE_SHAPE, layout="nhwc")))
    assert onnx_counts.count_macs(model) == sum(macs)
    # The exporter folds BatchNorm into the convolutions: fewer tensors, the same function.
    torch_params = sum(p.numel() for p in torch_teacher.parameters())
    assert 0.9 * torch_params <= onnx_counts.count_params(model) <= torch_params
