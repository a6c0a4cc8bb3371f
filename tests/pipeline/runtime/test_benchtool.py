"""`edgeforge bench`'s engine on small ONNX files built here, and every way a user's ONNX file can be refused."""

import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.errors import ConfigError
from pipeline.runtime import benchtool, onnx_files
from pipeline.runtime.benchtool import bench_file, format_table
from pipeline.runtime.feeds import parse_shape
from pipeline.runtime.onnx_files import input_signature, load_checked

TINY = dict(warmup_runs=1, warmup_seconds=0.0, min_runs=3, min_seconds=0.0)
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def conv_model() -> onnx.ModelProto:
    """x [N, 3, 8, 8] -> conv, relu, global average pool, flatten, gemm -> y [N, 10]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "F"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "F"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def masked_model() -> onnx.ModelProto:
    """a float [batch, seq] * mask int64 [batch, seq] -> out: a symbolic dim past the batch, two dtypes."""
    nodes = [
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["a", "m"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.fixture
def conv_file(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save_model(conv_model(), path)
    return path


@pytest.fixture
def masked_file(tmp_path):
    path = tmp_path / "masked.onnx"
    onnx.save_model(masked_model(), path)
    return path


def external_model(folder, location="w.bin"):
    """conv_model with its weights in `folder/w.bin`, the tensors then pointing at `location`."""
    folder.mkdir(exist_ok=True)
    path = folder / "ext.onnx"
    onnx.save_model(conv_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())
    return path


# --- parse_shape -----------------------------------------------------------------------------------------------


def test_parse_shape():
    assert parse_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_shape("a=b=2X5") == ("a=b", (2, 5))  # names may contain '='; 'X' works as well


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input", r"expected NAME=DIMS"),
        ("=1x3", r"expected NAME=DIMS"),
        ("input=", r"expected NAME=DIMS"),
        ("input=1xax3", r"dims must be integers separated by 'x'"),
        ("input=1,3", r"dims must be integers separated by 'x'"),
        ("input=0x3", r"every dim must be >= 1"),
        ("input=1x-3", r"every dim must be >= 1"),
    ],
)
def test_parse_shape_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_shape(text)


# --- bench_file ------------------------------------------------------------------------------------------------


def test_one_session_per_provider_threads_and_batch(conv_file, monkeypatch):
    created = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        created.append(kwargs["sess_options"].intra_op_num_threads)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    result = bench_file(conv_file, {}, (1, 2), (1, 2), ("cpu",), TINY)
    assert set(result) == {
        "model",
        "environment",
        "session_options",
        "settings_search",
        "settings_check",
        "preset",
        "method",
        "seed",
        "results",
        "peak_rss_bytes",
    }
    combos = [(entry["provider"], entry["threads"], entry["batch"]) for entry in result["results"]]
    assert combos == [("cpu", 1, 1), ("cpu", 1, 2), ("cpu", 2, 1), ("cpu", 2, 2)]
    assert created == [1, 1, 2, 2]  # a fresh session for every combination
    for entry in result["results"]:
        assert entry["runs"] >= 3 and entry["session_seconds"] > 0
        assert entry["p50_ms"] <= entry["p99_ms"] and sum(entry["histogram"]["counts"]) == entry["runs"]
        assert entry["throughput_ips"] == pytest.approx(entry["batch"] * 1000 / entry["mean_ms"])
    model = result["model"]
    assert model["sha256"] == hashlib.sha256(conv_file.read_bytes()).hexdigest()
    assert model["inputs"] == [("x", "float32", ["N", 3, 8, 8])] and model["outputs"] == [("y", "float32", ["N", 10])]
    assert result["preset"] == TINY and result["peak_rss_bytes"] > 0 and result["method"]["rounds"] == 1


def test_format_table_has_a_row_per_result_and_the_environment(conv_file, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = bench_file(conv_file, {}, (1, 2), (1,), ("cpu", "cuda"), TINY)
    lines = format_table(result).splitlines()
    assert lines[0].startswith(f"model: {conv_file}")
    assert lines[1].split()[:4] == ["provider", "threads", "batch", "p50"]
    assert "p90 ms [95% CI]" in lines[1] and "p99 ms [95% CI]" in lines[1]
    assert all(row.count("[") == 2 for row in lines[2:4])  # each row gives both intervals
    assert [line.split()[:3] for line in lines[2:4]] == [["cpu", "1", "1"], ["cpu", "1", "2"]]
    assert lines[4] == "cuda: skipped: onnxruntime has no CUDAExecutionProvider (install the gpu extra)"
    assert lines[5].startswith("environment: ") and "onnxruntime" in lines[5]
    assert len({len(line) for line in lines[1:4]}) == 1  # fixed width


def test_cuda_without_the_provider_is_skipped_not_run_on_cpu(conv_file, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = bench_file(conv_file, {}, (1,), (1,), ("cuda", "tensorrt"), TINY)
    assert result["results"] == [
        {"provider": "cuda", "skipped": "onnxruntime has no CUDAExecutionProvider (install the gpu extra)"},
        {"provider": "tensorrt", "skipped": "onnxruntime has no TensorrtExecutionProvider (install the gpu extra)"},
    ]


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDAExecutionProvider and a GPU")
def test_cuda_runs_with_io_binding(conv_file):
    result = bench_file(conv_file, {}, (1,), (1,), ("cuda",), TINY)
    assert result["results"][0]["provider"] == "cuda" and result["results"][0]["runs"] >= 3


def test_symbolic_dim_past_the_batch_needs_shape(masked_file):
    with pytest.raises(ConfigError, match=r"input 'a' has symbolic dim 1 \('seq'\).*--shape a=1x<seq>"):
        bench_file(masked_file, {}, (1,), (1,), ("cpu",), TINY)


def test_shape_fixes_symbolic_dims_and_the_batch(masked_file):
    result = bench_file(masked_file, {"a": (2, 5), "mask": (2, 5)}, (), (1,), ("cpu",), TINY)
    assert [entry["batch"] for entry in result["results"]] == [2]  # the --shape's first dim
    with pytest.raises(ConfigError, match=r"batch is fixed at 2: pass --batch 2 or no --batch"):
        bench_file(masked_file, {"a": (2, 5), "mask": (2, 5)}, (1, 4), (1,), ("cpu",), TINY)


def test_feeds_match_dtypes_and_are_seeded(masked_file):
    model = load_checked(masked_file)
    signature = input_signature(model)
    dtypes = benchtool.input_dtypes(model, signature)
    feed = benchtool.make_feed(signature, dtypes, {"a": (3, 4), "mask": (3, 4)}, 3, seed=0)
    assert feed["a"].dtype == np.float32 and feed["mask"].dtype == np.int64 and feed["mask"].shape == (3, 4)
    assert set(np.unique(feed["mask"])) <= {0, 1}
    again = benchtool.make_feed(signature, dtypes, {"a": (3, 4), "mask": (3, 4)}, 3, seed=0)
    assert np.array_equal(feed["a"], again["a"])


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"b": (1, 2)}, r"the model has no input 'b'; its inputs: a, mask"),
        ({"a": (1, 2, 3), "mask": (1, 2)}, r"--shape a=1x2x3: rank 3, but input 'a' has rank 2"),
    ],
)
def test_bad_shape_options(masked_file, shapes, message):
    with pytest.raises(ConfigError, match=message):
        bench_file(masked_file, shapes, (1,), (1,), ("cpu",), TINY)


def test_shape_must_agree_with_fixed_dims(conv_file):
    with pytest.raises(ConfigError, match=r"--shape x=1x4x8x8: dim 1 is fixed at 3 in the model \[N, 3, 8, 8\]"):
        bench_file(conv_file, {"x": (1, 4, 8, 8)}, (), (1,), ("cpu",), TINY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(providers=("gpu",)), r"provider 'gpu' is not known: expected cpu, cuda, tensorrt, openvino"),
        (dict(threads=(0,)), r"threads=\[0\]: expected one or more integers >= 1"),
        (dict(preset={"min_runs": 1}), r"expected exactly the keys warmup_runs, warmup_seconds, min_runs"),
        (dict(batch_sizes=(0,)), r"batch sizes \[0\]: expected integers >= 1"),
    ],
)
def test_bad_arguments(conv_file, kwargs, message):
    arguments = dict(shapes={}, batch_sizes=(1,), threads=(1,), providers=("cpu",), preset=TINY) | kwargs
    with pytest.raises(ConfigError, match=message):
        bench_file(conv_file, **arguments)


# --- load_checked ----------------------------------------------------------------------------------------------


def test_load_checked_reads_a_good_model_with_external_data(tmp_path):
    model = load_checked(external_model(tmp_path / "m"))
    weights = numpy_helper.to_array(model.graph.initializer[0])
    assert weights.shape == (4, 3, 3, 3) and np.array_equal(
        weights, numpy_helper.to_array(conv_model().graph.initializer[0])
    )


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.onnx: no such file"):
        load_checked(tmp_path / "missing.onnx")


def test_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"not a regular file"):
        load_checked(tmp_path)


def test_symlink_is_refused(conv_file, tmp_path):
    link = tmp_path / "link.onnx"
    link.symlink_to(conv_file)
    with pytest.raises(ConfigError, match=r"link\.onnx: is a symbolic link; pass the file itself"):
        load_checked(link)


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), b"this is a text file, not a model\n" * 3],
    ids=["random-bytes", "text"],
)
def test_not_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"bad\.onnx: not an ONNX model or truncated"):
        load_checked(path)


def test_truncated(conv_file):
    data = conv_file.read_bytes()
    conv_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"conv\.onnx: not an ONNX model or truncated"):
        load_checked(conv_file)


def test_checker_failure(tmp_path):
    model = conv_model()
    model.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match=r"onnx\.checker rejects the model: No Op registered for NoSuchOp"):
        load_checked(path)


def test_external_data_climbing_out(tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 1024)
    with pytest.raises(ConfigError, match=r"external data at '\.\./outside\.bin', which contains '\.\.'"):
        load_checked(external_model(tmp_path / "m", "../outside.bin"))


def test_external_data_absolute(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 1024)
    with pytest.raises(ConfigError, match=r"an absolute path; it must be relative to the model's folder"):
        load_checked(external_model(tmp_path / "m", str(outside)))


def test_external_data_symlink(tmp_path):
    path = external_model(tmp_path / "m", "linked.bin")
    os.symlink(path.parent / "w.bin", path.parent / "linked.bin")
    with pytest.raises(ConfigError, match=r"linked\.bin is a symbolic link \(links are refused\)"):
        load_checked(path)


def test_external_data_through_a_linked_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.bin").write_bytes(b"\0" * 1024)
    path = external_model(tmp_path / "m", "sub/w.bin")
    os.symlink(tmp_path / "elsewhere", path.parent / "sub")
    with pytest.raises(ConfigError, match=r"external data at 'sub/w\.bin', which resolves outside the model's folder"):
        load_checked(path)


def test_external_data_hard_link(tmp_path):
    path = external_model(tmp_path / "m", "hard.bin")
    os.link(path.parent / "w.bin", path.parent / "hard.bin")
    with pytest.raises(ConfigError, match=r"external data at 'hard\.bin', which has several hard links"):
        load_checked(path)


def test_external_data_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"external data at 'gone\.bin', which does not exist"):
        load_checked(external_model(tmp_path / "m", "gone.bin"))


def test_old_onnx_is_refused(conv_file, monkeypatch):
    monkeypatch.setattr(onnx_files.metadata, "version", lambda name: "1.20.1")
    with pytest.raises(ConfigError, match=r"onnx 1\.20\.1 is installed, but loading ONNX files needs onnx >= 1\.21"):
        load_checked(conv_file)


def test_tuned_settings_of_two_threads_are_held_to_the_rounds_against_one_thread(conv_file, monkeypatch):
    """Two threads fast in the settings search's burst and slow in the rounds (as on a 2-core VM, BENCHMARKS.md
    "Two threads at two speeds"): the rows, the session options and the search's choice are one thread's."""
    from pipeline.runtime import environment, tuning

    def timings(ms_by_threads):
        def time_session(path, provider, settings, feed, preset, batch, options=None):
            return np.full(10, ms_by_threads[settings.threads] * batch), 0.001

        return time_session

    monkeypatch.setattr(environment, "cores", lambda: 2)
    monkeypatch.setattr(tuning, "time_session", timings({1: 0.06, 2: 0.05}))
    monkeypatch.setattr(benchtool, "time_session", timings({1: 0.06, 2: 0.10}))
    result = bench_file(conv_file, {}, (1, 4), (1,), ("cpu",), TINY, rounds=3, tune=True)
    check = result["settings_check"]
    assert check["kept"] == "one_thread" and check["searched"].startswith("2 threads")
    assert (check["searched_ms"], check["one_thread_ms"]) == (pytest.approx(0.10), pytest.approx(0.06))
    assert result["session_options"]["intra_op_num_threads"] == 1
    assert [(row["threads"], row["batch"]) for row in result["results"]] == [(1, 1), (1, 4)]
    assert [e["label"] for e in result["settings_search"] if e["chosen"]] == [check["one_thread"]]
    assert f"{check['one_thread']} kept" in format_table(result)
    # Two threads as fast in the rounds as in the search keep their place
    monkeypatch.setattr(benchtool, "time_session", timings({1: 0.06, 2: 0.05}))
    result = bench_file(conv_file, {}, (1,), (1,), ("cpu",), TINY, rounds=3, tune=True)
    assert result["settings_check"]["kept"] == "searched" and result["session_options"]["intra_op_num_threads"] == 2
    assert [row["threads"] for row in result["results"]] == [2]
