"""Weights a user brings: read from safetensors or a state_dict .pt, checked key by key, one line for each bad file."""

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import ConfigError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.training.recipes import start_from

SPEC = ModelSpec("cnn", 4, 1, 10, (8, 8))


def params(weights=None, reinit_head=False) -> SimpleNamespace:
    """The three fields start_from reads of a teacher's or distill's params."""
    return SimpleNamespace(weights=None if weights is None else str(weights), pretrained=False, reinit_head=reinit_head)


def fresh(spec: ModelSpec = SPEC, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_load_from_safetensors_and_a_state_dict(tmp_path, suffix):
    source = fresh(seed=0)
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    model = fresh(seed=1)
    assert start_from(model, SPEC, "teacher", params(path)) == f"from teacher{suffix}"
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), source(x))


def test_no_weights_leaves_the_fresh_model(tmp_path):
    model, twin = fresh(), fresh()
    assert start_from(model, SPEC, "teacher", params()) == "fresh weights"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))


def test_a_pickled_module_is_refused_in_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(fresh(), path)  # the whole nn.Module: loading it would run pickled code
    expected = f"teacher.weights='{path}' holds pickled Python objects (a whole model?), which are never loaded"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "teacher", params(path))


def test_a_training_checkpoint_dict_is_not_a_state_dict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": fresh().state_dict()}, path)
    expected = f"teacher.weights='{path}' is a dict with keys ['epoch', 'model'], not a state_dict of tensors"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "teacher", params(path))


def test_missing_and_unexpected_keys_name_the_key_and_the_fix(tmp_path):
    state = fresh().state_dict()
    missing, unexpected = tmp_path / "missing.safetensors", tmp_path / "unexpected.safetensors"
    save_file({k: v for k, v in state.items() if k != "0.0.weight"}, missing)
    save_file({**state, "extra.weight": torch.zeros(2)}, unexpected)
    expected = (
        f"distill.weights='{missing}' has no key '0.0.weight', which distill.model='cnn' needs; choose the model "
        "(and width) these weights were saved from"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "distill", params(missing))
    expected = f"distill.weights='{unexpected}' has key 'extra.weight', which distill.model='cnn' lacks"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "distill", params(unexpected))


def test_another_width_is_a_shape_mismatch_naming_the_key(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(fresh(ModelSpec("cnn", 8, 1, 10, (8, 8))).state_dict(), path)
    expected = f"teacher.weights='{path}': '0.0.weight' has shape [8, 1, 3, 3], teacher.model='cnn' needs [4, 1, 3, 3]"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "teacher", params(path))


def test_a_head_of_another_class_count_needs_reinit_head(tmp_path):
    source = fresh(ModelSpec("cnn", 4, 1, 1000, (8, 8)), seed=0)
    path = tmp_path / "imagenet.safetensors"
    save_file(source.state_dict(), path)
    head = [name for name, _ in source.named_parameters()][-2]  # the last Linear's weight, then its bias
    expected = (
        f"teacher.weights='{path}': classifier '{head}' has shape [1000, 16], the data's 10 classes need [10, 16]; "
        "set teacher.reinit_head: true to train a new classifier"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        start_from(fresh(), SPEC, "teacher", params(path))

    model, untouched = fresh(seed=1), fresh(seed=1)
    start_from(model, SPEC, "teacher", params(path, reinit_head=True))
    for name, tensor in model.state_dict().items():
        kept = untouched.state_dict()[name] if name.startswith(head.rpartition(".")[0]) else source.state_dict()[name]
        assert torch.equal(tensor, kept), name  # the body from the file, the new head as initialised


def test_unreadable_and_absent_files_are_one_line(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"teacher.weights='.*garbage.safetensors' is not a readable safetensors"):
        start_from(fresh(), SPEC, "teacher", params(garbage))
    with pytest.raises(ConfigError, match=r"teacher.weights='.*absent.pt': no such file; give the path of a"):
        start_from(fresh(), SPEC, "teacher", params(tmp_path / "absent.pt"))
