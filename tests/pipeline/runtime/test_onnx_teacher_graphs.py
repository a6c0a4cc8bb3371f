"""ONNX teachers shaped as other exporters write them: the wrapper and the counts see through local functions
(jax2onnx writes modules as functions) and NHWC inputs, and the wrapped graph computes what the file computes."""

import numpy as np
import onnx
import torch

from pipeline.runtime import onnx_counts, onnx_teacher
from pipeline.training.onnx_teacher import OnnxTeacher

WEIGHTS = np.random.RandomState(0).randn(64, 10).astype(np.float32)
BIAS = np.linspace(-1, 1, 10).astype(np.float32)


def dense_in_a_function(path):
    """NHWC [B, 8, 8, 1] -> Reshape -> a local function Dense (MatMul + Add) -> [B, 10]."""
    helper = onnx.helper
    dense = helper.make_function(
        "custom.fn",
        "Dense",
        ["x", "w", "b"],
        ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        opset_imports=[helper.make_opsetid("", 18)],
    )
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Dense", ["flat", "w", "b"], ["logits"], domain="custom.fn"),
    ]
    initializers = [
        onnx.numpy_helper.from_array(WEIGHTS, "w"),
        onnx.numpy_helper.from_array(BIAS, "b"),
        onnx.numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["B", 8, 8, 1])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["B", 10])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("custom.fn", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, functions=[dense]), str(path))
    return path


def test_a_graph_with_local_functions_is_wrapped_and_counted(tmp_path):
    source = dense_in_a_function(tmp_path / "jax.onnx")
    norm = ([0.5], [0.25])
    settings = onnx_teacher.Settings("nhwc", 1.0, (0.0,), (1.0,))
    # Its names (`input`, `logits`) are the wrapper's own: the user's graph is prefixed, so nothing collides.
    _, wrapped, _ = onnx_teacher.prepare(source, tmp_path / "teacher.onnx", settings, norm, (1, 8, 8), 10)
    pixels = np.random.RandomState(1).randint(0, 256, (4, 1, 8, 8)).astype(np.float32)
    logits = OnnxTeacher(tmp_path / "teacher.onnx")(torch.from_numpy((pixels / 255 - 0.5) / 0.25)).numpy()
    expected = pixels.transpose(0, 2, 3, 1).reshape(4, 64) @ WEIGHTS + BIAS
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-5)
    assert onnx_counts.count_macs(wrapped) == 64 * 10
    assert onnx_counts.count_params(onnx.load(str(source))) == 64 * 10 + 10
