"""A teacher the user brings as an ONNX file (`teacher.onnx`), made into a graph that takes the pipeline's input.

Every model downstream of the teacher stage (distillation, bench, the report, a release) is fed the pipeline's
input: NCHW float32, `(pixel / 255 - mean) / std` with the data's mean and std. A model exported from Keras,
TensorFlow or JAX often expects something else: NHWC, pixels in [0, 255], ImageNet's mean and std. Rather than
teaching each consumer a second input convention, the user's graph is wrapped once, here: a per-channel Mul and Add
(and a Transpose for NHWC) in front turn the pipeline's input into the model's, and its output becomes `logits`
(the log of its probabilities, for a model that ends in a softmax).
The wrapped file is then an exported model like the others, so training, onnxruntime accuracy, latency and the
report use it unchanged, and the conversion is one piece of code, not one per consumer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx.compose

from pipeline.cache import sha256_file
from pipeline.errors import ConfigError, first_line
from pipeline.runtime.onnx_files import (
    all_tensors,
    check_external_location,
    check_path,
    input_signature,
    load_checked,
    output_signature,
    parse,
)
from pipeline.runtime.sessions import INPUT_NAME, OUTPUT_NAME

PREFIX = "teacher/"  # the user's names, prefixed: none can collide with the wrapper's `input` and `logits`


@dataclasses.dataclass(frozen=True)
class Settings:
    """The teacher.onnx_* keys as the config gives them (mean and std None: the data's own)."""

    layout: str = "nchw"
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "logits"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the user's model expects: `(pixel * scale - mean) / std` per channel, in `layout`; and what it gives."""

    layout: str  # nchw or nhwc
    scale: float  # pixels (0..255) are multiplied by this first: 1/255 for [0, 1], 1 for [0, 255]
    mean: tuple[float, ...]  # one per channel, in the units of pixel * scale
    std: tuple[float, ...]
    output: str  # logits, or probabilities (a softmax at its end), whose log the wrapper gives as logits

    def describe(self) -> str:
        return (
            f"{self.layout.upper()} float32, (pixel * {self.scale:.6g} - mean) / std with mean "
            f"{[round(m, 6) for m in self.mean]} and std {[round(s, 6) for s in self.std]}; it outputs {self.output}"
        )


def preprocessing(settings: Settings, data_norm: tuple[list[float], list[float]]) -> Preprocessing:
    """The user's settings with null mean/std resolved to the data's own normalization (what the student sees),
    expressed in the units of pixel * scale, and one value broadcast to every channel."""
    data_mean, data_std = data_norm
    channels = len(data_mean)
    resolved = []
    for key, given, data_value in (("mean", settings.mean, data_mean), ("std", settings.std, data_std)):
        values = tuple(v * 255 * settings.scale for v in data_value) if given is None else tuple(given)
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ConfigError(
                f"teacher.onnx_{key}={list(given)} has {len(values)} values, but the data has {channels} channel(s): "
                f"give one value or {channels}"
            )
        resolved.append(values)
    return Preprocessing(settings.layout, settings.scale, resolved[0], resolved[1], settings.output)


def affine(pre: Preprocessing, data_norm: tuple[list[float], list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (multiplier, offset), shape [1, C, 1, 1], that turn the pipeline's input into the model's.

    The pipeline gives x = (p / 255 - m_d) / s_d, so p = 255 (x s_d + m_d); the model wants (p scale - m) / s
    = x * (255 scale s_d / s) + (255 scale m_d - m) / s."""
    data_mean, data_std = (np.array(values, dtype=np.float64) for values in data_norm)
    mean, std = np.array(pre.mean, dtype=np.float64), np.array(pre.std, dtype=np.float64)
    multiplier = 255 * pre.scale * data_std / std
    offset = (255 * pre.scale * data_mean - mean) / std
    return (values.astype(np.float32).reshape(1, -1, 1, 1) for values in (multiplier, offset))


def source_sha256(path: Path) -> dict[str, str]:
    """sha256 of the file and of every external-data file it names (checked first): what the stage key holds."""
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        raise ConfigError(f"teacher.onnx={str(path)!r}: no such file; give the path of an .onnx file")
    check_path(path)  # as bench's loader: a link is refused
    model = parse(path)
    hashes = {path.name: sha256_file(path)}
    for tensor in _external_tensors(model):
        check_external_location(path, tensor)
        location = next(entry.value for entry in tensor.external_data if entry.key == "location")
        hashes.setdefault(location, sha256_file(path.parent / location))
    return dict(sorted(hashes.items()))


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [tensor for tensor in all_tensors(model) if tensor.data_location == onnx.TensorProto.EXTERNAL]


def check_signature(
    path: Path, model: onnx.ModelProto, layout: str, image_shape: tuple[int, int, int], classes: int
) -> None:
    """One float32 input of [batch, C, H, W] (nchw) or [batch, H, W, C] (nhwc) and one float32 output of
    [batch, classes], or a ConfigError naming the file, what it has and the fix. Symbolic dims pass."""
    inputs, outputs = input_signature(model), output_signature(model)
    if len(inputs) != 1:
        raise ConfigError(f"{path}: has {len(inputs)} inputs {[i[0] for i in inputs]}; a teacher takes one image batch")
    name, dtype, dims = inputs[0]
    channels, height, width = image_shape
    expected = [channels, height, width] if layout == "nchw" else [height, width, channels]
    other = "nhwc" if layout == "nchw" else "nchw"
    flipped = [height, width, channels] if layout == "nchw" else [channels, height, width]
    if dtype != "float32":
        raise ConfigError(f"{path}: input {name!r} is {dtype}; edgeforge feeds float32: export a float32 input")
    if dims is None or len(dims) != 4 or not _fits(dims[1:], expected):
        fix = (
            f"set teacher.onnx_layout={other}"
            if dims is not None and len(dims) == 4 and _fits(dims[1:], flipped)
            else f"export the model for {'x'.join(map(str, expected))} inputs or change data.image_size"
        )
        raise ConfigError(
            f"{path}: input {name!r} has shape {dims}, but teacher.onnx_layout={layout} and the data need "
            f"[batch, {', '.join(map(str, expected))}]: {fix}"
        )
    if isinstance(dims[0], int):
        raise ConfigError(f"{path}: input {name!r} has a fixed batch of {dims[0]}; export it with a dynamic batch axis")
    if len(outputs) != 1:
        raise ConfigError(f"{path}: has {len(outputs)} outputs {[o[0] for o in outputs]}; a teacher has one: logits")
    name, dtype, dims = outputs[0]
    if dtype != "float32" or dims is None or len(dims) != 2 or not _fits(dims[1:], [classes]):
        raise ConfigError(
            f"{path}: output {name!r} is {dtype} {dims}, but the data has {classes} classes: the teacher must output "
            f"float32 logits of shape [batch, {classes}] (a classifier for these classes, in their order)"
        )


def _fits(dims: list[int | str], expected: list[int]) -> bool:
    return all(not isinstance(d, int) or d == e for d, e in zip(dims, expected, strict=True))


def wrap(
    model: onnx.ModelProto, pre: Preprocessing, data_norm: tuple[list[float], list[float]], image_shape: tuple[int, ...]
) -> onnx.ModelProto:
    """The user's graph behind the conversion: input `input` [batch, C, H, W] as the pipeline feeds it, output
    `logits` [batch, classes]. (The model must hold its weights: load it with onnx_files.load_checked.)"""
    wrapped = onnx.compose.add_prefix(model, PREFIX)
    graph = wrapped.graph
    initializers = {tensor.name for tensor in graph.initializer}
    (user_input,) = [value for value in graph.input if value.name not in initializers]
    (user_output,) = graph.output
    multiplier, offset = affine(pre, data_norm)
    to_layout = (
        onnx.helper.make_node("Transpose", ["edgeforge/scaled"], [user_input.name], perm=[0, 2, 3, 1])
        if pre.layout == "nhwc"
        else onnx.helper.make_node("Identity", ["edgeforge/scaled"], [user_input.name])
    )
    nodes = [
        onnx.helper.make_node("Mul", [INPUT_NAME, "edgeforge/multiplier"], ["edgeforge/multiplied"]),
        onnx.helper.make_node("Add", ["edgeforge/multiplied", "edgeforge/offset"], ["edgeforge/scaled"]),
        to_layout,
        *graph.node,
        *to_logits(user_output.name, pre.output),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(multiplier, "edgeforge/multiplier"),
            onnx.numpy_helper.from_array(offset, "edgeforge/offset"),
            onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, dtype=np.float32), "edgeforge/tiny"),
        ]
    )
    classes = user_output.type.tensor_type.shape.dim[1]
    graph.input.remove(user_input)
    graph.input.insert(
        0, onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", *image_shape])
    )
    graph.output.remove(user_output)
    logits_shape = ["batch", classes.dim_value or classes.dim_param or None]
    graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, logits_shape))
    return wrapped


def to_logits(output: str, kind: str) -> list[onnx.NodeProto]:
    """Nodes from the user's output to `logits`. Probabilities become their log: softmax(log p / T) is p softened
    by T, as distillation needs, and the argmax is the same. The smallest float32 keeps log(0) finite."""
    if kind == "logits":
        return [onnx.helper.make_node("Identity", [output], [OUTPUT_NAME])]
    return [
        onnx.helper.make_node("Max", [output, "edgeforge/tiny"], ["edgeforge/positive"]),
        onnx.helper.make_node("Log", ["edgeforge/positive"], [OUTPUT_NAME]),
    ]


def save_wrapped(model: onnx.ModelProto, source: Path, out: Path) -> None:
    """Write the wrapped model as one file (its weights inside), checked by onnx.checker."""
    if model.ByteSize() >= onnx.checker.MAXIMUM_PROTOBUF:
        raise ConfigError(
            f"teacher.onnx={str(source)!r}: the model is over 2 GB, which edgeforge cannot store in one ONNX file yet"
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise ConfigError(f"{source}: behind its preprocessing it fails onnx.checker: {first_line(error)}") from error
    onnx.save(model, str(out))


def prepare(
    source: Path,
    out: Path,
    settings: Settings,
    data_norm: tuple[list[float], list[float]],
    image_shape: tuple[int, int, int],
    classes: int,
) -> tuple[onnx.ModelProto, onnx.ModelProto, Preprocessing]:
    """Load the user's file through the safe loader, check it against the data and write it wrapped to `out`.
    Returns the user's model, the wrapped one and the resolved preprocessing."""
    model = load_checked(source)
    check_signature(source, model, settings.layout, image_shape, classes)
    pre = preprocessing(settings, data_norm)
    wrapped = wrap(model, pre, data_norm, image_shape)
    save_wrapped(wrapped, source, out)
    return model, wrapped, pre
