import numpy as np
import onnx
import pytest
import torch

from pipeline.errors import StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.onnx_export import export_onnx
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
