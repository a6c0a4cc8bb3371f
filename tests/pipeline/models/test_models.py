"""Every built-in model builds, forwards, prunes, round-trips and exports; user models load from 'module:function'."""

import hashlib
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.cifar import MODELS, BasicBlock
from pipeline.models.factory import (
    build_model,
    check_model_name,
    classifier_head,
    count_macs_and_params,
    model_source_sha256,
)
from pipeline.models.pruning import prune_channels
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import architecture, load_model, save_model
from pipeline.runtime.onnx_export import export_onnx
from pipeline.runtime.sessions import run_batches, session
from stages.prune import Params

WIDTH = 4  # tiny: the tests check wiring, not accuracy
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]  # digits, MNIST, CIFAR


def tiny(name: str, shape: tuple[int, int, int], num_classes: int = 10) -> tuple[nn.Module, ModelSpec]:
    """A seeded model in eval mode whose BatchNorm statistics come from random inputs, so activations stay O(1)."""
    spec = ModelSpec(name, WIDTH, shape[0], num_classes, shape[1:])
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        model.train()(torch.randn(16, *shape))
    return model.eval(), spec


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_forwards(name, shape):
    model, spec = tiny(name, shape, num_classes=7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)
    head = classifier_head(model, spec.num_classes)
    assert head is [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_prunes_and_round_trips_with_its_history(name, tmp_path):
    model, spec = tiny(name, (1, 8, 8))
    macs, params = count_macs_and_params(model, spec)
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))
    pruned_macs, pruned_params = count_macs_and_params(model, spec)
    assert history
    assert pruned_params < 0.6 * params and pruned_macs < 0.6 * macs
    assert classifier_head(model, spec.num_classes).out_features == spec.num_classes

    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, loaded_spec = load_model(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert loaded_spec == spec
    assert torch.equal(loaded(x), model(x))
    assert count_macs_and_params(loaded, spec) == (pruned_macs, pruned_params)


# One export per builder: resnet14, resnet32, resnet56 and resnet110 are resnet20's builder with 2, 5, 9 and 18
# blocks a stage instead of 3, and their exports (5, 12, 11 and 21 s on the AMD EPYC Zen 1) test nothing resnet8
# (one block a stage) and resnet20 (several) do not. All of them are pruned and round-tripped above.
# The same for the stride-2 stems: resnet8_s2 is the builder with the stem's stride.
DEEPER = ("resnet14", "resnet32", "resnet56", "resnet110", "resnet14_s2", "resnet20_s2")
EXPORTED = [name for name in MODELS if name not in DEEPER]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "mobilenetv2" else n for n in EXPORTED]
)
def test_every_model_builder_exports_pruned_to_onnx_and_matches_pytorch(name, tmp_path):
    model, spec = tiny(name, (3, 32, 32))
    prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))
    export_onnx(model, spec, tmp_path / "model.onnx", opset=18)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = run_batches(session(tmp_path / "model.onnx"), x)
    assert np.abs(got - expected).max() < 1e-4


def test_resnet20_has_19_main_path_convs_2_projections_and_the_published_size():
    model = build_model(ModelSpec("resnet20", 16, 3, 10, (32, 32)))
    shortcuts = {id(m) for block in model.modules() if isinstance(block, BasicBlock) for m in block.shortcut.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    projections = [m for m in convs if id(m) in shortcuts]
    assert len(convs) - len(projections) == 19
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    params = sum(p.numel() for p in model.parameters())
    assert 0.27e6 <= params < 0.275e6  # published 0.27M with option A shortcuts; projections add 2.8k


@pytest.mark.parametrize("name", ["resnet8", "resnet14", "resnet20"])
def test_a_stride_2_stem_is_the_same_network_on_a_quarter_of_the_pixels(name):
    full = build_model(ModelSpec(name, 16, 3, 10, (32, 32)))
    strided = build_model(ModelSpec(f"{name}_s2", 16, 3, 10, (32, 32)))
    assert architecture(strided) == architecture(full)  # the same layers and widths, so the same weights fit
    assert strided[0][0].stride == (2, 2) and full[0][0].stride == (1, 1)
    spec = ModelSpec(name, 16, 3, 10, (32, 32))
    full_macs, _ = count_macs_and_params(full, spec)
    strided_macs, _ = count_macs_and_params(strided, spec)
    assert strided_macs / full_macs == pytest.approx(0.25, abs=0.01)  # every conv runs on a quarter of the pixels


@pytest.mark.parametrize(("name", "millions"), [("resnet32", 0.46), ("resnet56", 0.85), ("resnet110", 1.7)])
def test_resnets_have_the_published_parameter_counts(name, millions):
    model = build_model(ModelSpec(name, 16, 3, 10, (32, 32)))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(millions * 1e6, rel=0.02)


@pytest.mark.parametrize(("width", "stages"), [(8, (8, 16, 32)), (16, (16, 32, 64)), (32, (32, 64, 128))])
def test_resnet_width_is_the_stem_channel_count(width, stages):
    model = build_model(ModelSpec("resnet8", width, 3, 10, (32, 32)))
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert model[0][0].out_channels == width
    assert tuple(b.conv2.out_channels for b in blocks) == stages
    assert model[-1].in_features == 4 * width


@pytest.mark.parametrize(("width", "stem", "last"), [(32, 32, 1280), (16, 16, 640), (8, 8, 320), (4, 8, 160)])
def test_mobilenetv2_width_is_the_stem_and_scales_every_layer(width, stem, last):
    model = build_model(ModelSpec("mobilenetv2", width, 3, 10, (32, 32)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == stem and convs[-1].out_channels == last
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert model[-1].in_features == last
    if width == 32:
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.24e6, rel=0.01)


def test_unknown_and_malformed_model_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"teacher.model='vgg' is not a known model; available: cnn, mlp, resnet8"):
        check_model_name("teacher.model", "vgg")
    with pytest.raises(ConfigError, match=r"teacher.model='pkg.mod:' is not a model name: expected one of cnn"):
        check_model_name("teacher.model", "pkg.mod:")


USER_MODULE = """
from torch import nn


def build(in_channels, num_classes):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def not_a_model(in_channels, num_classes):
    return "a string"


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Path of `edgeforge_test_user_model.py`, importable for this test only."""
    name = "edgeforge_test_user_model"
    path = tmp_path / f"{name}.py"
    path.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield path
    sys.modules.pop(name, None)


def test_a_user_model_builds_prunes_and_round_trips(user_module, tmp_path):
    check_model_name("teacher.model", "edgeforge_test_user_model:build")
    spec = ModelSpec("edgeforge_test_user_model:build", WIDTH, 3, 5, (8, 8))
    model = build_model(spec).eval()
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))
    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    assert model[0].out_channels == 4 and torch.equal(loaded(x), model(x))


def test_model_source_sha256_follows_the_user_module_file(user_module):
    name = "edgeforge_test_user_model:build"
    first = model_source_sha256(name)
    assert first == hashlib.sha256(user_module.read_bytes()).hexdigest()
    user_module.write_text(USER_MODULE.replace("8, 3", "16, 3"))
    assert model_source_sha256(name) not in (None, first)
    assert model_source_sha256("resnet20") is None


def test_user_model_errors_say_what_to_fix(user_module):
    missing = re.escape(
        "teacher.model='no_such_pkg.mod:build': cannot import module 'no_such_pkg.mod' (No module named "
        "'no_such_pkg'); make it importable (pip install -e . or PYTHONPATH)"
    )
    with pytest.raises(ConfigError, match=missing):
        check_model_name("teacher.model", "no_such_pkg.mod:build")
    for attribute in ("nope", "NOT_CALLABLE"):
        name = f"edgeforge_test_user_model:{attribute}"
        expected = f"teacher.model='{name}': module 'edgeforge_test_user_model' has no callable '{attribute}'"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            check_model_name("teacher.model", name)
    with pytest.raises(ConfigError, match=r"returned str, not a torch.nn.Module"):
        build_model(ModelSpec("edgeforge_test_user_model:not_a_model", WIDTH, 1, 10, (8, 8)))


def test_a_user_builder_on_torchvision_imports_in_a_fresh_interpreter(tmp_path):
    """A builder module that imports torchvision first thing (a fresh interpreter: nothing imported it before) gets
    the same torchvision as a 'torchvision:NAME' model, even where its compiled operators do not load."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed: pip install -c constraints.txt 'edgeforge[models]'")
    (tmp_path / "edgeforge_test_tv_model.py").write_text(
        "import torchvision\n\ndef build(in_channels, num_classes):\n"
        "    return torchvision.models.resnet18(num_classes=num_classes)\n"
    )
    script = (
        "from pipeline.models.factory import build_model, check_model_name; from pipeline.models.spec import "
        "ModelSpec; check_model_name('teacher.model', 'edgeforge_test_tv_model:build'); "
        "print(build_model(ModelSpec('edgeforge_test_tv_model:build', None, 3, 7, (32, 32))).fc.out_features)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7"]


def test_a_user_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "edgeforge_test_broken_model.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = "cannot import module 'edgeforge_test_broken_model' (RuntimeError: needs a GPU)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_model_name("distill.model", "edgeforge_test_broken_model:build")
