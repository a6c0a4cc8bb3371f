"""The process's memory of its exports: the same model again is a copy, anything that could change the graph is
exported afresh. The exporter is replaced by one that writes its call number: these tests are about which calls
reach it (that it writes the same bytes for the same model is tests/stages/test_export.py's)."""

import copy
from pathlib import Path

import pytest
import torch

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime import onnx_export


@pytest.fixture
def exports(monkeypatch):
    """The models that reached the exporter, with an empty memory of earlier exports."""
    calls = []

    def numbered(model, spec, path, opset, translations=None):
        calls.append(spec.name)
        path.write_text(f"export {len(calls)}")

    monkeypatch.setattr(onnx_export, "export_fresh", numbered)
    monkeypatch.setattr(onnx_export, "_EXPORTS", onnx_export._KeptExports())
    return calls


def built(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


def test_the_same_model_again_is_a_copy_and_any_change_is_exported_afresh(exports, tmp_path):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    model = built(spec)
    onnx_export.export_onnx(model, spec, tmp_path / "first.onnx", 18)
    (tmp_path / "first.onnx").unlink()  # the copy does not depend on the caller's file
    onnx_export.export_onnx(built(spec), spec, tmp_path / "same.onnx", 18)  # another object, the same weights
    assert len(exports) == 1 and (tmp_path / "same.onnx").read_text() == "export 1"

    onnx_export.export_onnx(model, spec, tmp_path / "opset.onnx", 17)
    onnx_export.export_onnx(built(spec, seed=1), spec, tmp_path / "weights.onnx", 18)
    with torch.no_grad():
        model.get_buffer(next(name for name, _ in model.named_buffers() if name.endswith("running_mean"))).add_(1)
    onnx_export.export_onnx(model, spec, tmp_path / "buffer.onnx", 18)
    assert len(exports) == 4 and (tmp_path / "buffer.onnx").read_text() == "export 4"


def test_same_weights_in_other_modules_or_with_hooks_are_exported_afresh(exports, tmp_path):
    spec = ModelSpec("resnet8", 4, 3, 10, (16, 16))
    model = built(spec)
    onnx_export.export_onnx(model, spec, tmp_path / "resnet8.onnx", 18)
    strided = ModelSpec("resnet8_s2", 4, 3, 10, (16, 16))  # a stride-2 stem: the same tensors, another graph
    other = build_model(strided)
    other.load_state_dict(model.state_dict())
    onnx_export.export_onnx(other, strided, tmp_path / "strided.onnx", 18)
    restrided = copy.deepcopy(model)  # the same spec and tensors, a module argument changed
    next(module for module in restrided.modules() if isinstance(module, torch.nn.Conv2d)).stride = (2, 2)
    onnx_export.export_onnx(restrided, spec, tmp_path / "restrided.onnx", 18)
    handle = model.register_forward_hook(lambda module, inputs, output: output * 2)
    onnx_export.export_onnx(model, spec, tmp_path / "hooked.onnx", 18)
    handle.remove()
    onnx_export.export_onnx(model, spec, tmp_path / "again.onnx", 18)
    assert exports == ["resnet8", "resnet8_s2", "resnet8", "resnet8"]
    assert (tmp_path / "again.onnx").read_text() == "export 1"


def test_only_the_last_kept_exports_are_remembered(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "KEPT_EXPORTS", 2)
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    for seed in (0, 1, 2, 0):
        onnx_export.export_onnx(built(spec, seed), spec, tmp_path / f"{seed}.onnx", 18)
    assert len(exports) == 4  # seed 0's file went when seed 2's came
    assert len(list(onnx_export._EXPORTS.folder.iterdir())) == 2


def test_a_copy_that_cannot_be_kept_leaves_the_export_and_nothing_half_written(exports, tmp_path, monkeypatch):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    real_copy = onnx_export.shutil.copyfile

    def disk_full(source, target):
        if "edgeforge-exports-" in str(target):
            Path(target).write_text("half")
            raise OSError(28, "No space left on device")
        return real_copy(source, target)

    monkeypatch.setattr(onnx_export.shutil, "copyfile", disk_full)
    onnx_export.export_onnx(built(spec), spec, tmp_path / "first.onnx", 18)
    assert (tmp_path / "first.onnx").read_text() == "export 1" and onnx_export._EXPORTS.files == {}
    assert list(onnx_export._EXPORTS.folder.iterdir()) == []
    onnx_export.export_onnx(built(spec), spec, tmp_path / "again.onnx", 18)
    assert len(exports) == 2  # nothing was kept, so the model is exported again
