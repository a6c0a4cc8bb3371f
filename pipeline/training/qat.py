"""Quantization-aware fine-tuning with onnxruntime's QDQ int8 arithmetic, so the model trained is the model run.

The fake-quantized model does what onnxruntime's static QDQ quantizer (quantize_static, onnxruntime 1.32,
quant_utils.compute_scale_zp) does to the exported graph:

- BatchNorm is folded into the convolution before it (torch.fx), as the exported and optimized ONNX has it: the
  weights that train are the weights that are quantized.
- Weights: per output channel, symmetric, zero point 0, scale = 2 * max|w| / (qmax - qmin) with int8 [-127, 127],
  or [-64, 64] with reduce_range (onnxruntime's reduced int8 range; 7 bits).
- Biases: int32, scale = input scale * weight scale, rounded half to even (onnxruntime's quantize_bias_static).
- Activations: uint8 [0, 255] or int8 [-128, 127], asymmetric; the range always holds 0; scale = (max - min) /
  (qmax - qmin), zero point = round(qmin - min / scale). The range is the calibration images' min and max to start
  (what minmax post-training calibration gives) and a moving average while fine-tuning (momentum 0.01); frozen
  for evaluation and export.
- Rounding half to even everywhere (torch.fake_quantize_* and onnxruntime's QuantizeLinear both use nearbyint).

Where: one quantize-dequantize on the model input, and on the output of every operation that feeds another except
shape-only ones (flatten, view, reshape, dropout); after the ReLU or ReLU6 that follows an operation rather than
between them (onnxruntime folds a Relu or Clip into the QuantizeLinear after it); none on the logits. Exported
(pipeline/runtime/qdq_export.py), the same points become QuantizeLinear/DequantizeLinear pairs, and the weights and
biases int8 and int32 initializers behind DequantizeLinear, which onnxruntime fuses into QLinearConv and friends.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp

from pipeline.errors import StageError
from pipeline.runtime import qdq_ops

ACTIVATION_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
MOMENTUM = 0.01  # weight of each batch's min/max in the moving range (onnxruntime's CalibMovingAverageConstant)
SHAPE_ONLY_FUNCTIONS = {torch.flatten, torch.reshape, getattr, operator.getitem}
SHAPE_ONLY_METHODS = {"flatten", "view", "reshape", "contiguous", "size", "squeeze", "unsqueeze"}
SHAPE_ONLY_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)
FOLDED_ACTIVATIONS = {torch.relu, nn.functional.relu, nn.functional.relu6}
FOLDED_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)


def weight_range(reduce_range: bool) -> tuple[int, int]:
    return (-64, 64) if reduce_range else (-127, 127)


def weight_scales(weight: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """Per output channel: 2 * max|w| / (qmax - qmin), computed in float64 and stored as float32 (as onnxruntime
    does); 1 for an all-zero channel (onnxruntime's fallback below float32's smallest normal number)."""
    qmin, qmax = weight_range(reduce_range)
    absmax = weight.detach().abs().flatten(1).amax(1).double()
    scales = 2 * absmax / (qmax - qmin)
    tiny = torch.finfo(torch.float32).tiny
    return torch.where(scales < tiny, torch.ones_like(scales), scales).float()


def activation_scale(low: torch.Tensor, high: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of an activation range, by onnxruntime's compute_scale_zp (asymmetric)."""
    qmin, qmax = ACTIVATION_RANGES[kind]
    low, high = torch.clamp(low.double(), max=0.0), torch.clamp(high.double(), min=0.0)
    scale = (high - low) / (qmax - qmin)
    if float(scale) < torch.finfo(torch.float32).tiny:
        return torch.ones((), device=low.device), torch.zeros((), dtype=torch.int32, device=low.device)
    zero_point = torch.round(qmin - low / scale).to(torch.int32)
    return scale.float(), zero_point


class ActivationQuant(nn.Module):
    """Fake quantization of one activation tensor; `exporting` makes it the QDQ operator the exporter translates."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.exporting = False
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(False))
        self.observing = False  # calibration: take the plain min and max of every batch, no quantization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exporting:
            return qdq_ops.quantize_dequantize(x, self.export_scale, self.export_zero_point)
        if self.observing or (self.training and not bool(self.observed)):
            self.low, self.high = _widened(self, x)
            self.observed.fill_(True)
            if self.observing:
                return x
        elif self.training:
            low, high = x.detach().min(), x.detach().max()
            self.low += MOMENTUM * (low - self.low)
            self.high += MOMENTUM * (high - self.high)
        scale, zero_point = self.scale_and_zero_point()
        qmin, qmax = ACTIVATION_RANGES[self.kind]
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)

    def scale_and_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        return activation_scale(self.low, self.high, self.kind)


def _widened(quant: ActivationQuant, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = x.detach().min(), x.detach().max()
    if quant.observed:
        return torch.minimum(quant.low, low), torch.maximum(quant.high, high)
    return low, high


class QuantWeights(nn.Module):
    """A folded Conv2d or Linear whose weights (per channel, symmetric) and bias (int32) are fake-quantized."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, input_quant: ActivationQuant, reduce_range: bool):
        super().__init__()
        self.layer = layer
        self.reduce_range = reduce_range
        self.exporting = False
        object.__setattr__(self, "input_quant", input_quant)  # a reference, not a second copy in the state dict

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fake-quantized weight, fake-quantized bias): straight-through gradients inside the range. While the
        activation ranges are calibrated, the float ones (as onnxruntime calibrates the float model)."""
        weight = self.layer.weight
        if self.input_quant.observing:
            return weight, self.layer.bias
        scales = weight_scales(weight, self.reduce_range)
        qmin, qmax = weight_range(self.reduce_range)
        zeros = torch.zeros(len(scales), dtype=torch.int32, device=scales.device)
        weight = torch.fake_quantize_per_channel_affine(weight, scales, zeros, 0, qmin, qmax)
        bias = self.layer.bias
        if bias is not None:
            bias_scales = self.input_quant.scale_and_zero_point()[0] * scales
            bias = bias + (torch.round(bias / bias_scales) * bias_scales - bias).detach()
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exporting:
            weight = qdq_ops.dequantize(self.export_weight, self.export_weight_scale, self.export_weight_zero)
            bias = None
            if self.layer.bias is not None:
                bias = qdq_ops.dequantize(self.export_bias, self.export_bias_scale, self.export_bias_zero)
        else:
            weight, bias = self.quantized()
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)


def fake_quantized(
    model: nn.Module, example: torch.Tensor, activation_type: str, reduce_range: bool
) -> torch.fx.GraphModule:
    """A copy of `model` with BatchNorm folded and fake quantization where onnxruntime's QDQ graph quantizes.
    `example` (an input batch) tells which operations produce float tensors (not flags or shapes)."""
    try:
        graph_module = fuse(copy.deepcopy(model).eval())  # symbolic trace, then Conv+BatchNorm folding
        ShapeProp(graph_module).propagate(example)  # each tensor-valued node's meta["tensor_meta"]
    except Exception as error:  # torch.fx raises many kinds for code it cannot trace
        raise StageError(
            f"quantize: quantization-aware training needs a model torch.fx can trace ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); set quantize.qat: never"
        ) from None
    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    count = 0

    def quantize_after(node: torch.fx.Node) -> torch.fx.Node:
        nonlocal count
        name = f"activation_quant_{count}"
        count += 1
        modules[name] = ActivationQuant(activation_type)
        graph_module.add_submodule(name, modules[name])
        with graph.inserting_after(node):
            quant = graph.call_module(name, (node,))
        node.replace_all_uses_with(quant, delete_user_cb=lambda user: user is not quant)
        return quant

    for node in list(graph.nodes):
        if node.op == "placeholder" or (node.op != "output" and _quantized_output(node, modules)):
            quantize_after(node)
    for node in list(graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(layer, nn.Conv2d | nn.Linear):
            source = _input_quant(node.args[0], modules)  # which holds the quantizers added so far
            if source is None:  # e.g. a layer after a concatenation of shape-only paths: quantize its input here
                source = quantize_after(node.args[0])
            input_quant = graph_module.get_submodule(source.target)
            graph_module.add_submodule(node.target, QuantWeights(layer, input_quant, reduce_range))
    graph.lint()
    graph_module.recompile()
    return graph_module


def _quantized_output(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the QDQ graph quantizes this operation's output where it is produced."""
    meta = node.meta.get("tensor_meta")
    if _shape_only(node, modules) or not hasattr(meta, "dtype") or not meta.dtype.is_floating_point:
        return False  # shapes, flags, tuples and integer tensors are not activations
    users = list(node.users)
    if not users or all(user.op == "output" for user in users):
        return False  # the logits stay float
    return not (len(users) == 1 and _folded_activation(users[0], modules))


def _shape_only(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in SHAPE_ONLY_FUNCTIONS
    if node.op == "call_method":
        return node.target in SHAPE_ONLY_METHODS
    if node.op == "call_module":
        return isinstance(modules[node.target], SHAPE_ONLY_MODULES)
    return node.op == "get_attr"


def _folded_activation(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function":
        return node.target in FOLDED_ACTIVATIONS
    return node.op == "call_module" and isinstance(modules[node.target], FOLDED_ACTIVATION_MODULES)


def _input_quant(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node | None:
    """The activation quantizer a layer's input comes from, through shape-only operations."""
    while True:
        if node.op == "call_module" and isinstance(modules[node.target], ActivationQuant):
            return node
        if not _shape_only(node, modules) or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return None
        node = node.args[0]


def calibrate(model: torch.fx.GraphModule, batches) -> None:
    """Start every activation range at the min and max over `batches` (float activations, as minmax calibration)."""
    quants = [module for module in model.modules() if isinstance(module, ActivationQuant)]
    model.eval()
    for quant in quants:
        quant.observing = True
        quant.observed.fill_(False)
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for quant in quants:
        quant.observing = False


def freeze(model: torch.fx.GraphModule) -> None:
    """Fix every range and store the integers onnxruntime will hold: int8 weights, int32 biases, activation scales
    and zero points. From here the model computes with those (and exports as QDQ ONNX)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ActivationQuant):
            scale, zero_point = module.scale_and_zero_point()
            dtype = torch.uint8 if module.kind == "uint8" else torch.int8
            module.register_buffer("export_scale", scale.float().reshape(()))
            module.register_buffer("export_zero_point", zero_point.to(dtype).reshape(()))
            module.exporting = True
    for module in model.modules():
        if isinstance(module, QuantWeights):
            _freeze_weights(module)


def _freeze_weights(module: QuantWeights) -> None:
    weight = module.layer.weight.detach()
    scales = weight_scales(weight, module.reduce_range)
    qmin, qmax = weight_range(module.reduce_range)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    quantized = torch.clamp(torch.round(weight / scales.view(shape)), qmin, qmax).to(torch.int8)
    module.register_buffer("export_weight", quantized)
    module.register_buffer("export_weight_scale", scales)
    module.register_buffer("export_weight_zero", torch.zeros(len(scales), dtype=torch.int8))
    if module.layer.bias is not None:
        bias_scales = (module.input_quant.export_scale.double() * scales.double()).float()
        bias = torch.round(module.layer.bias.detach().double() / bias_scales.double()).to(torch.int32)
        module.register_buffer("export_bias", bias)
        module.register_buffer("export_bias_scale", bias_scales)
        module.register_buffer("export_bias_zero", torch.zeros(len(scales), dtype=torch.int32))
    module.exporting = True
