import onnx
import pytest

from stages.bench import PROVIDER


@pytest.mark.parametrize(("int8", "fp32"), [("int8", "pruned"), ("student_int8", "student")])
def test_int8_models_are_qdq_and_within_a_point_of_fp32(tiny_run, int8, fp32):
    _, results = tiny_run
    graph = onnx.load(str(results["quantize"].artifact.file(f"{int8}.onnx"))).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    models = {m["name"]: m for m in results["bench"].artifact.metrics["models"]}
    assert abs(models[int8]["accuracy"] - models[fp32]["accuracy"]) <= 0.01
    assert models[int8]["size_bytes"] < models[fp32]["size_bytes"]
    assert set(models[int8]["latency"][PROVIDER]) == {"1", "8"}  # dynamic batch survives quantization


def test_every_quantization_argument_is_recorded(tiny_run):
    _, results = tiny_run
    metrics = results["quantize"].artifact.metrics
    assert metrics["arguments"] == {
        "quant_format": "QDQ",
        "per_channel": True,
        "reduce_range": True,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calibrate_method": "minmax",
        "op_types_to_quantize": None,
        "nodes_to_exclude": None,
        "extra_options": {},
    }
    assert metrics["calibration_images"] == 256
