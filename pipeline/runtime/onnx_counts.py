"""Parameters and MACs of an ONNX model, for a model that exists only as ONNX (a teacher the user brings).

PyTorch models are counted by torch-pruning on the module; an ONNX graph is counted here from its shapes at batch
1: the multiply-accumulates of Conv, Gemm and MatMul (the layers that hold a classifier's work; element-wise ops,
pooling and normalization are left out, as they are a few percent), and the elements of its floating-point
initializers.
"""

from __future__ import annotations

import math

import onnx
import onnx.inliner
import onnx.shape_inference


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every floating-point initializer (the weights)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return sum(math.prod(tensor.dims) for tensor in model.graph.initializer if tensor.data_type in floats)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one image (the model's input with its batch dim set to 1). The input's other dims
    must be fixed: symbolic ones count as 1."""
    single = onnx.ModelProto()
    single.CopyFrom(model)
    for value in single.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    # Layers inside local functions (jax2onnx writes modules as functions) count as the graph's own.
    inferred = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(single))
    shapes = {tensor.name: list(tensor.dims) for tensor in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            # A dim still symbolic is the batch: exporters compute shapes from the input's (Shape, Gather, Concat)
            # and inference does not carry the 1 through them. Spatial dims are fixed (the teacher stage's wrapped
            # model has a fixed image size), so at batch 1 every symbolic dim is 1.
            shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor.shape.dim]
    return sum(_node_macs(node, shapes) for node in inferred.graph.node)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """A node's MACs from its input and output shapes; 0 for other ops or shapes inference could not tell."""
    inputs = [shapes.get(name) for name in node.input]
    output = shapes.get(node.output[0]) if node.output else None
    if output is None or any(shape is None for shape in inputs[:2]):
        return 0
    if node.op_type == "Conv":  # every output element: in_channels / group x kernel products
        weight = inputs[1]
        return math.prod(output) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        transposed = any(a.name == "transA" and a.i for a in node.attribute)
        inner = inputs[0][0] if transposed else inputs[0][1]
        return math.prod(output) * inner
    if node.op_type == "MatMul":
        return math.prod(output) * inputs[0][-1]
    return 0
