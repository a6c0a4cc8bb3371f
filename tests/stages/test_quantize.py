import re

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


def quantize_again(tiny_run, *sets):
    """The tiny run's quantize stage again with `sets` (everything before it cached)."""
    from pipeline.runner import load_config, run_pipeline
    from tests.conftest import TINY

    store, _ = tiny_run
    return run_pipeline(load_config(overrides=(*TINY, *sets)), store, target="quantize")[-1].artifact


def test_quantization_aware_fine_tune_keeps_the_int8_file_more_accurate_on_validation(tiny_run):
    from pipeline.datasets.artifact import load_dataset
    from pipeline.runtime.predict import Normalized
    from pipeline.search.quantize_variants import validation_accuracy

    _, results = tiny_run
    artifact = quantize_again(tiny_run, "quantize.qat=always", "quantize.qat_epochs=1")
    dataset = load_dataset(results["data"].artifact)
    validation = Normalized(dataset.val_images, *dataset.norm), dataset.val_labels
    for name in ("int8", "student_int8"):
        model = artifact.metrics["models"][name]
        qat = model["qat"]
        assert qat["ran"] and len(qat["history"]) == 1
        assert qat["agreement"]["max_logit_difference"] <= 0.02 and qat["agreement"]["top1_disagreement"] <= 0.01
        aware = qat["qat_validation_accuracy"] > qat["ptq_validation_accuracy"]
        assert qat["kept"] == ("quantization-aware" if aware else "post-training")
        published = validation_accuracy(artifact.file(f"{name}.onnx"), *validation)
        assert published == (qat["qat_validation_accuracy"] if aware else qat["ptq_validation_accuracy"])
        assert ("quantization-aware" in model["arguments"].get("method", "")) == aware
        assert qat["fp32_validation_accuracy"] - qat["ptq_validation_accuracy"] == pytest.approx(qat["ptq_drop"])
    assert "quantization-aware" in artifact.metrics["summary"]


def test_qat_auto_leaves_post_training_int8_alone_within_max_drop(tiny_run):
    _, results = tiny_run
    artifact = quantize_again(tiny_run, "quantize.qat=auto", "quantize.max_drop=1")
    for name in ("int8", "student_int8"):
        assert artifact.metrics["models"][name]["qat"]["ran"] is False
        # the same bytes as post-training int8 with QAT off
        assert (
            artifact.manifest["files"][f"{name}.onnx"] == results["quantize"].artifact.manifest["files"][f"{name}.onnx"]
        )


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("qat", "off", "auto or always or never"), ("qat_epochs", 0, ">= 1"), ("max_drop", 2, "[0, 1]")],
)
def test_bad_qat_settings_get_one_line(key, value, named):
    from pipeline.errors import ConfigError
    from stages.quantize import Params

    with pytest.raises(ConfigError, match=re.escape(named)):
        Params(**{key: value})
