"""The memory a deployment needs, measured in a fresh process."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.runtime.memory import peak_memory
from pipeline.runtime.sessions import SessionSettings


def matmul_model(path, width: int) -> None:
    """input (N, width) times a width x width float32 initializer: width**2 * 4 bytes of weights."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((width, width)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_a_fresh_process_sees_the_models_own_memory(tmp_path):
    matmul_model(tmp_path / "small.onnx", 64)  # 16 kB of weights
    matmul_model(tmp_path / "big.onnx", 4096)  # 64 MB of weights
    small = peak_memory(tmp_path / "small.onnx", SessionSettings(), [1, 64], runs=3)
    big = peak_memory(tmp_path / "big.onnx", SessionSettings(), [1, 4096], runs=3)
    # Python with numpy and onnxruntime alone: tens of MB, not the hundreds of the test process that started it.
    assert 10 < small["baseline_rss_mb"] < 200 and abs(small["baseline_rss_mb"] - big["baseline_rss_mb"]) < 20
    assert small["model_rss_mb"] < 20
    assert big["model_rss_mb"] > 60  # the weights are resident at least once
    assert abs(big["peak_rss_mb"] - big["baseline_rss_mb"] - big["model_rss_mb"]) < 0.2
