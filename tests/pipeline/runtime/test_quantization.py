"""The extra options edgeforge passes explicitly are the ones onnxruntime fills in: the same bytes either way."""

import contextlib
import io

import numpy as np
import pytest
import torch

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime import quantization
from pipeline.runtime.onnx_export import DEFAULT_OPSET, export_onnx
from pipeline.runtime.quantization import QuantSettings, extra_options, quantize


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(build_model(spec).eval(), spec, path, DEFAULT_OPSET)
    calibration = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    return path, calibration


def quantize_with_empty_options(source, target, calibration, settings):
    """What quantize_static writes when it fills in every extra option itself."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_optimization=False, skip_onnx_shape=False)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(target),
            quantization.ImageReader(calibration, settings.calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=getattr(QuantType, quantization.TYPES[settings.activation_type]),
            weight_type=getattr(QuantType, quantization.TYPES[settings.weight_type]),
            calibrate_method=getattr(CalibrationMethod, quantization.METHODS[settings.method]),
            calibration_providers=["CPUExecutionProvider"],
            extra_options={},
        )


@pytest.mark.parametrize(
    "settings",
    [
        QuantSettings(),
        QuantSettings(method="entropy", per_channel=False, reduce_range=False, activation_type="int8"),
        QuantSettings(method="percentile", weight_type="uint8", calibration_batch=8),
    ],
    ids=["minmax", "entropy-s8", "percentile-u8-weights"],
)
def test_explicit_extra_options_are_onnxruntimes_defaults(exported, tmp_path, settings):
    source, calibration = exported
    quantize(source, tmp_path / "explicit.onnx", calibration, settings)
    quantize_with_empty_options(source, tmp_path / "defaults.onnx", calibration, settings)
    assert (tmp_path / "explicit.onnx").read_bytes() == (tmp_path / "defaults.onnx").read_bytes()
    assert extra_options(settings)["WeightSymmetric"] is (settings.weight_type == "int8")


def test_a_changed_extra_option_changes_the_file(exported, tmp_path, monkeypatch):
    # The comparison above can see a difference: a non-default option gives other bytes.
    source, calibration = exported
    quantize(source, tmp_path / "default.onnx", calibration, QuantSettings())
    monkeypatch.setattr(
        quantization, "extra_options", lambda settings: {**extra_options(settings), "ActivationSymmetric": True}
    )
    quantize(source, tmp_path / "changed.onnx", calibration, QuantSettings())
    assert (tmp_path / "default.onnx").read_bytes() != (tmp_path / "changed.onnx").read_bytes()
