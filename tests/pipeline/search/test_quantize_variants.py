import numpy as np
import onnx
import pytest
import torch

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.onnx_export import export_onnx
from pipeline.search import quantize_variants
from pipeline.search.quantize_variants import choose, variants
from stages import quantize

VNNI = ["avx2", "avx512_vnni", "fma"]
AVX2 = ["avx2", "fma"]


def test_without_vnni_u8_activations_keep_reduce_range():
    tried = variants(("minmax", "entropy", "percentile"), AVX2, x86=True)
    assert len(tried) == 18  # 3 methods x 2 weight granularities x (u8 with reduce_range, s8 with and without)
    assert not any(v["activation_type"] == "uint8" and not v["reduce_range"] for v in tried)
    assert {(v["activation_type"], v["reduce_range"]) for v in tried} == {
        ("uint8", True),
        ("int8", True),
        ("int8", False),
    }


@pytest.mark.parametrize(("isa", "x86"), [(VNNI, True), ([], False)])
def test_with_vnni_or_off_x86_every_combination_is_tried(isa, x86):
    tried = variants(("minmax", "entropy", "percentile"), isa, x86)
    assert len(tried) == 24
    assert len({tuple(sorted(v.items())) for v in tried}) == 24


def result(accuracy, p50):
    return {"validation_accuracy": accuracy, "p50_ms": p50}


def test_choice_is_the_fastest_accurate_variant():
    results = [result(0.90, 0.20), result(0.85, 0.05), result(0.898, 0.10), result(0.90, 0.30)]
    assert choose(results, tolerance=0.005) == 2  # 0.85 is faster but 5 points worse
    assert choose(results, tolerance=0.1) == 1
    assert choose(results, tolerance=0.0) == 0  # only the two at 0.90 qualify; 0.20 ms beats 0.30 ms


def test_near_tied_latencies_go_to_the_more_accurate_variant():
    results = [result(0.896, 0.100), result(0.900, 0.104), result(0.900, 0.104)]
    assert choose(results, tolerance=0.005) == 1  # within 5% of the fastest, more accurate; the earlier of equals


def exported_model_and_data(folder, monkeypatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny cnn exported to folder/model.onnx with brief variant timing: (calibration, inputs, labels), the labels
    the fp32 model's own predictions, so it is right on all of them."""
    fast = dict(warmup_runs=2, warmup_seconds=0, min_runs=20, min_seconds=0)
    monkeypatch.setattr(quantize_variants, "SEARCH_TIMING", (fast, fast))
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    export_onnx(model, spec, folder / "model.onnx", 18)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    inputs = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(inputs)).argmax(1).numpy()
    return calibration, inputs, labels


def test_search_writes_the_chosen_variant_and_records_every_one(tmp_path, monkeypatch):
    calibration, inputs, labels = exported_model_and_data(tmp_path, monkeypatch)
    params = quantize.Params(search=True, search_methods=("minmax",), calibration_samples=32, calibration_batch=16)
    searched = quantize_variants.search(
        tmp_path / "model.onnx", tmp_path / "int8.onnx", calibration, (inputs, labels), params
    )
    assert searched["fp32_validation_accuracy"] == 1.0
    assert len(searched["variants"]) == (8 if searched["vnni"] or not searched["x86"] else 6)
    for variant in searched["variants"]:
        assert set(variant) == {
            "method",
            "per_channel",
            "activation_type",
            "reduce_range",
            "validation_accuracy",
            "p50_ms",
        }
        assert 0 <= variant["validation_accuracy"] <= 1 and variant["p50_ms"] > 0
    assert searched["chosen"] == choose(searched["variants"], params.search_tolerance)
    chosen = searched["variants"][searched["chosen"]]
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    activation_scales = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    zero_point = next(i for i in graph.initializer if i.name == activation_scales[0].input[2])
    assert zero_point.data_type == (
        onnx.TensorProto.UINT8 if chosen["activation_type"] == "uint8" else onnx.TensorProto.INT8
    )
