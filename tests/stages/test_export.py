import numpy as np
import onnx
import pytest
import torch

from pipeline.errors import StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.onnx_export import export_fresh, export_onnx
from pipeline.runtime.sessions import run_batches, session
from stages.export import Params, compare_with_torch


def test_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, spec, path, opset=18)
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    x = torch.randn(13, 1, 8, 8)
    diffs = compare_with_torch(model, path, x, Params(compare_batch=13), "m")
    assert set(diffs) == {"max_abs_diff_batch_1", "max_abs_diff_batch_13"}
    assert max(diffs.values()) < 1e-4
    assert np.allclose(run_batches(session(path), x.numpy(), batch=5), model(x).detach().numpy(), atol=1e-4)


def test_exports_share_one_torchlib_list_and_write_the_same_bytes_as_a_fresh_one(tmp_path):
    from torch.onnx._internal.exporter import _registration

    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    export_fresh(model, spec, tmp_path / "fresh.onnx", opset=18)  # wraps the list's builder, if nothing did yet
    built = _registration.onnxscript_apis.get_torchlib_ops
    built.cache_clear()  # whatever exported before in this process: count from here
    export_fresh(model, spec, tmp_path / "built.onnx", opset=18)
    export_fresh(model, spec, tmp_path / "reused.onnx", opset=18)
    assert built.cache_info().misses == 1 and built.cache_info().hits == 1
    assert (tmp_path / "built.onnx").read_bytes() == (tmp_path / "reused.onnx").read_bytes()


class Residual(torch.nn.Module):
    """x + relu(conv(x)) with an in-place ReLU: the pattern of residual and inverted-residual blocks."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.relu(self.conv(x))


def test_in_place_activations_export_as_out_of_place_ones_and_stay_in_place(tmp_path):
    import copy

    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = torch.nn.Sequential(Residual(), Residual(), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    out_of_place = copy.deepcopy(model)
    for module in out_of_place.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    export_fresh(model, spec, tmp_path / "model.onnx", opset=18)
    export_fresh(out_of_place, spec, tmp_path / "out_of_place.onnx", opset=18)
    # The same file, byte for byte. Exported in place, torch.export decomposes each ReLU into a functional one
    # (slowly) and numbers the nodes after it differently.
    assert (tmp_path / "model.onnx").read_bytes() == (tmp_path / "out_of_place.onnx").read_bytes()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 2 and all(relu.inplace for relu in relus)  # the model is handed back as it came


def test_a_mismatch_beyond_tolerance_fails_the_stage(tmp_path):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    model = build_model(spec).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, spec, path, opset=18)
    with torch.no_grad():
        model[-1].bias.add_(1.0)  # PyTorch now disagrees with the exported graph
    with pytest.raises(StageError, match=r"export: m.onnx differs from PyTorch by 1 at batch 1"):
        compare_with_torch(model, path, torch.randn(4, 1, 8, 8), Params(compare_batch=4), "m")


def test_export_stage_records_counts_and_differences(tiny_run):
    _, results = tiny_run
    models = results["export"].artifact.metrics["models"]
    assert set(models) == {"teacher", "student", "pruned"}
    assert models["teacher"]["macs"] > models["student"]["macs"] > models["pruned"]["macs"]
    assert all(m["max_abs_diff_batch_64"] < 1e-4 for m in models.values())
