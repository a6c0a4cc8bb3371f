"""Post-training static int8 in onnxruntime (QDQ), with every argument of quantize_static explicit and recorded.

quantize_static's defaults have changed across onnxruntime versions, so nothing is left to them: every documented
`extra_options` key is passed with the value onnxruntime 1.32 would fill in (`extra_options`; a test checks that the
file is byte for byte the one quantize_static writes with `extra_options={}`), and all of them are recorded. On x86
without VNNI, u8 x s8 products can saturate a 16-bit intermediate (../shared/FACTS.md): `reduce_range` (7-bit
weights) avoids it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from pipeline.errors import StageError
from pipeline.runtime.sessions import INPUT_NAME, run_batches, session

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # -> onnxruntime's CalibrationMethod
TYPES = {"int8": "QInt8", "uint8": "QUInt8"}  # -> onnxruntime's QuantType


@dataclasses.dataclass(frozen=True)
class QuantSettings:
    """The quantize_static settings edgeforge varies; everything else is fixed in `quantize`."""

    method: str = "minmax"  # calibration: minmax, entropy or percentile
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = True  # 7-bit weights: avoids u8 x s8 saturation on CPUs without VNNI
    activation_type: str = "uint8"  # uint8 or int8
    weight_type: str = "int8"  # int8 or uint8
    calibration_batch: int = 64  # images per calibration batch


class ImageReader:
    """Feeds calibration batches of preprocessed training images to onnxruntime: its CalibrationDataReader protocol
    (get_next, and iteration), which that abstract class recognizes in any class with get_next."""

    def __init__(self, inputs: np.ndarray, batch: int):
        self._batches = iter([inputs[i : i + batch] for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def __iter__(self) -> ImageReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def quantize(source: Path, target: Path, calibration: np.ndarray, settings: QuantSettings) -> None:
    """quant_pre_process, then quantize_static with every argument explicit (see `arguments`)."""
    # Imported here: onnxruntime.quantization loads onnx (half a second), which only quantizing needs.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(f"{target.stem}.prepared.onnx")
    quant_pre_process(
        str(source), str(prepared), skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=False
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the Entropy/Percentile calibrators print progress
        quantize_static(
            str(prepared),
            str(target),
            ImageReader(calibration, settings.calibration_batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=None,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=getattr(QuantType, TYPES[settings.activation_type]),
            weight_type=getattr(QuantType, TYPES[settings.weight_type]),
            nodes_to_quantize=None,
            nodes_to_exclude=None,
            use_external_data_format=False,
            calibrate_method=getattr(CalibrationMethod, METHODS[settings.method]),
            calibration_providers=["CPUExecutionProvider"],
            extra_options=extra_options(settings),
        )
    prepared.unlink()


def extra_options(settings: QuantSettings) -> dict[str, Any]:
    """Every extra option of quantize_static (QDQ, static) at the value onnxruntime fills in when it is absent."""
    return {
        "ActivationSymmetric": False,
        "ActivationRestrictedAsymmetric": False,
        "WeightSymmetric": settings.weight_type == "int8",  # signed weights are quantized symmetrically
        "EnableSubgraph": False,
        "ForceQuantizeNoInputCheck": False,
        "MatMulConstBOnly": False,
        "AddQDQPairToWeight": False,
        "OpTypesToExcludeOutputQuantization": [],
        "DedicatedQDQPair": False,
        "QDQOpTypePerChannelSupportToAxis": {},
        "QuantizeBias": True,
        "CalibTensorRangeSymmetric": settings.method == "percentile",  # the Percentile calibrator's own default
        "CalibMovingAverage": False,
        "CalibMovingAverageConstant": 0.01,
        "CalibMaxIntermediateOutputs": None,
        "CalibStridedMinMax": None,
        **({"CalibPercentile": 99.999} if settings.method == "percentile" else {}),
        "SmoothQuant": False,
        "UseQDQContribOps": False,
        "MinimumRealRange": None,
        "TensorQuantOverrides": {},
        "QDQKeepRemovableActivations": False,
        "QDQDisableWeightAdjustForInt32Bias": False,
    }


# What quantize_static does not let a caller set, recorded beside the arguments: the calibrators' histogram sizes.
CALIBRATOR_FIXED = {
    "minmax": {},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048},
}


def arguments(settings: QuantSettings) -> dict[str, Any]:
    """The quantize_static arguments, as recorded in the manifest and the report: with the calibration images
    and onnxruntime's version, they reproduce the quantized file byte for byte."""
    return {
        "quant_format": "QDQ",
        "per_channel": settings.per_channel,
        "reduce_range": settings.reduce_range,
        "activation_type": settings.activation_type,
        "weight_type": settings.weight_type,
        "calibrate_method": settings.method,
        "op_types_to_quantize": None,
        "nodes_to_exclude": None,
        "calibration_batch": settings.calibration_batch,
        "extra_options": extra_options(settings),
        "calibrator_fixed": CALIBRATOR_FIXED[settings.method],
        "onnxruntime": onnxruntime.__version__,
    }


def check_dynamic_batch(path: Path, calibration: np.ndarray, num_classes: int) -> None:
    """Dynamic batch has broken after quantization in some onnxruntime versions: check batch 1 and N."""
    sess = session(path)
    for batch in (1, min(len(calibration), 7)):
        logits = run_batches(sess, calibration[:batch], batch=batch)
        if logits.shape != (batch, num_classes) or not np.all(np.isfinite(logits)):
            raise StageError(f"quantize: {path.name} gave logits of shape {logits.shape} at batch {batch}")
