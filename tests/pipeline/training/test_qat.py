"""Quantization-aware training: onnxruntime's arithmetic, where the quantizers go, and the QDQ export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType
from torch import nn

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.qdq_export import export_qdq
from pipeline.training import distributed, qat


def trained_bn_model(name: str, width: int = 4) -> tuple[nn.Module, ModelSpec]:
    """A tiny model whose BatchNorm statistics are not the identity (so folding them is tested)."""
    torch.manual_seed(0)
    spec = ModelSpec(name, width, 3, 10, (8, 8))
    model = build_model(spec).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
    return model.eval(), spec


@pytest.mark.parametrize("reduce_range", [False, True])
def test_weight_scales_are_onnxruntimes_symmetric_per_channel_scales(reduce_range):
    weight = torch.randn(6, 3, 3, 3)
    weight[2] = 0  # an all-zero channel: onnxruntime's scale 1
    ours = qat.weight_scales(weight, reduce_range)
    qmin, qmax = get_qmin_qmax_for_qType(onnx.TensorProto.INT8, reduce_range=reduce_range, symmetric=True)
    assert (int(qmin), int(qmax)) == qat.weight_range(reduce_range)
    for channel in range(6):
        values = weight[channel].numpy()
        zero, scale = compute_scale_zp(values.min(), values.max(), qmin, qmax, symmetric=True)
        assert int(zero) == 0 and float(ours[channel]) == float(scale)


@pytest.mark.parametrize("kind", ["uint8", "int8"])
@pytest.mark.parametrize(("low", "high"), [(-1.5, 3.0), (0.2, 4.0), (-2.0, -0.5), (0.0, 0.0)])
def test_activation_scale_and_zero_point_are_onnxruntimes(kind, low, high):
    qtype = onnx.TensorProto.UINT8 if kind == "uint8" else onnx.TensorProto.INT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype)
    zero, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax)
    ours_scale, ours_zero = qat.activation_scale(torch.tensor(low), torch.tensor(high), kind)
    assert float(ours_scale) == pytest.approx(float(scale), rel=1e-7) and int(ours_zero) == int(zero)


def test_batchnorm_is_folded_and_calibration_sees_the_float_model():
    model, _ = trained_bn_model("resnet8")
    fake = qat.fake_quantized(model, torch.zeros(2, 3, 8, 8), "uint8", True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fake.modules())
    x = torch.randn(32, 3, 8, 8)
    fake.eval()
    for quant in fake.modules():
        if isinstance(quant, qat.ActivationQuant):
            quant.observing = True  # no quantization: the folded float model
    with torch.no_grad():
        assert torch.allclose(fake(x), model(x), atol=1e-5)


def test_quantizers_sit_where_onnxruntime_quantizes():
    model, _ = trained_bn_model("resnet8")
    fake = qat.fake_quantized(model, torch.zeros(2, 3, 8, 8), "uint8", True)
    modules = dict(fake.named_modules())
    nodes = list(fake.graph.nodes)
    kinds = {node.name: type(modules.get(node.target)) if node.op == "call_module" else None for node in nodes}
    placeholder = next(node for node in nodes if node.op == "placeholder")
    assert kinds[next(iter(placeholder.users)).name] is qat.ActivationQuant  # the input is quantized
    output = next(node for node in nodes if node.op == "output")
    assert kinds[output.args[0].name] is qat.QuantWeights  # the logits are not
    for node in nodes:
        if kinds[node.name] is nn.ReLU:  # after a ReLU, not between it and the layer before
            assert kinds[node.args[0].name] is not qat.ActivationQuant
            assert all(kinds[user.name] is qat.ActivationQuant for user in node.users)
        if kinds[node.name] is qat.QuantWeights:  # every layer's input comes quantized (its bias scale needs it)
            source = node.args[0]
            while kinds[source.name] is nn.Flatten or source.op == "call_method":  # shape-only: no quantizer
                source = source.args[0]
            assert kinds[source.name] is qat.ActivationQuant


def test_gradients_pass_the_fake_quantization():
    model, _ = trained_bn_model("cnn")
    fake = qat.fake_quantized(model, torch.zeros(2, 3, 8, 8), "uint8", True)
    qat.calibrate(fake, [torch.randn(16, 3, 8, 8)])
    fake.train()
    fake(torch.randn(16, 3, 8, 8)).logsumexp(1).sum().backward()
    layers = [m for m in fake.modules() if isinstance(m, qat.QuantWeights)]
    assert layers and all(m.layer.weight.grad is not None and m.layer.weight.grad.abs().sum() > 0 for m in layers)


# MobileNetV2's export takes seconds (its 17 blocks): slow, as the deep models' plain exports are (test_models.py).
DEEP = pytest.param("mobilenetv2", "uint8", marks=pytest.mark.slow)


@pytest.mark.parametrize(("name", "kind"), [("resnet8", "uint8"), DEEP, ("cnn", "int8")])
def test_qdq_export_runs_in_int8_and_matches_the_pytorch_fake_quant_model(tmp_path, name, kind):
    """The stated tolerance (pipeline/training/qat_finetune.py): logits within 2% of their spread, the same top-1
    class on all but 1% of images; measured here far inside it."""
    model, spec = trained_bn_model(name, width=8)
    fake = qat.fake_quantized(model, torch.zeros(2, 3, 8, 8), kind, reduce_range=True)
    x = torch.randn(64, 3, 8, 8)
    qat.calibrate(fake, [x[:32], x[32:]])
    fake.train()
    fake(torch.randn(32, 3, 8, 8) * 1.2)  # the moving ranges move once
    fake.eval()
    with torch.no_grad():
        fake_quant = fake(x).numpy()
    qat.freeze(fake)
    with torch.no_grad():
        frozen = fake(x).numpy()
    path = tmp_path / "model.onnx"
    export_qdq(fake, spec, path, 18)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x.numpy()})[0]
    spread = frozen.max() - frozen.min()
    assert np.abs(logits - frozen).max() <= 0.02 * spread
    assert (logits.argmax(1) == frozen.argmax(1)).mean() >= 0.99
    assert np.abs(frozen - fake_quant).max() <= 0.02 * spread  # freezing changes nothing but tie rounding
    fused = Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert fused["QLinearConv"] >= 2 and fused["Conv"] == 0  # onnxruntime runs every convolution in int8
    stored = {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}
    assert onnx.TensorProto.INT8 in stored.values() and onnx.TensorProto.INT32 in stored.values()


def test_a_model_torch_fx_cannot_trace_gets_one_line():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    with pytest.raises(Exception, match=r"quantize.qat: never"):
        qat.fake_quantized(Branchy(), torch.zeros(2, 3, 8, 8), "uint8", True)


def test_alone_switches_data_parallel_training_off_inside_it_only(monkeypatch):
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    assert distributed.active() and distributed.share() == (0, 2)
    with distributed.alone():
        assert not distributed.active() and distributed.share() == (0, 1)
    assert distributed.active()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_library_families_export_int8_that_matches(tmp_path, name):
    """Residual and squeeze-excite blocks (Hardswish, Hardsigmoid, Mul) of torchvision's models, at 32 px."""
    from tests.pipeline.models.test_libraries import importable

    importable(name)
    torch.manual_seed(0)
    spec = ModelSpec(name, None, 3, 10, (32, 32))
    model = build_model(spec).eval()
    x = torch.randn(16, 3, 32, 32)
    fake = qat.fake_quantized(model, x[:2], "uint8", reduce_range=True)
    qat.calibrate(fake, [x])
    qat.freeze(fake)
    with torch.no_grad():
        frozen = fake(x).numpy()
    export_qdq(fake, spec, tmp_path / "model.onnx", 18)
    logits = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    assert np.abs(logits - frozen).max() <= 0.02 * (frozen.max() - frozen.min())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fake.modules())  # folded, as the exported graph has it
