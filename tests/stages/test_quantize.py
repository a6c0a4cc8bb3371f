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


def test_every_quantization_argument_is_recorded_and_reproduces_the_file_byte_for_byte(tiny_run, tmp_path):
    import hashlib

    import onnxruntime

    from pipeline.datasets.artifact import load_dataset
    from pipeline.runtime.quantization import QuantSettings, quantize
    from stages.quantize import Params, calibration_inputs

    _, results = tiny_run
    artifact = results["quantize"].artifact
    recorded = artifact.metrics["arguments"]
    assert {k: recorded[k] for k in ("quant_format", "per_channel", "reduce_range", "calibrate_method")} == {
        "quant_format": "QDQ",
        "per_channel": True,
        "reduce_range": True,
        "calibrate_method": "minmax",
    }
    assert recorded["activation_type"] == "uint8" and recorded["weight_type"] == "int8"
    assert (
        recorded["extra_options"]["WeightSymmetric"] is True and recorded["extra_options"]["MatMulConstBOnly"] is False
    )
    assert recorded["onnxruntime"] == onnxruntime.__version__ and artifact.metrics["calibration_images"] == 256
    # From the recorded arguments and the stage's calibration images alone, the same bytes.
    params = Params(**artifact.manifest["params"])
    calibration = calibration_inputs(load_dataset(results["data"].artifact), params)
    settings = QuantSettings(
        recorded["calibrate_method"],
        recorded["per_channel"],
        recorded["reduce_range"],
        recorded["activation_type"],
        recorded["weight_type"],
        recorded["calibration_batch"],
    )
    quantize(results["export"].artifact.file("pruned.onnx"), tmp_path / "again.onnx", calibration, settings)
    again = hashlib.sha256((tmp_path / "again.onnx").read_bytes()).hexdigest()
    assert again == artifact.manifest["files"]["int8.onnx"]
