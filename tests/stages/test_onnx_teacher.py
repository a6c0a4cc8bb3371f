"""`teacher.onnx`: an ONNX classifier from another framework as the teacher. Its accuracy is the file's own (with
its own preprocessing, to the image), the file and its external data are in the key, each bad file or contradictory
setting is one line, and a run with it reaches the report."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from pipeline.cache import ArtifactStore
from pipeline.cli import cli
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import ConfigError, StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import load_model
from pipeline.runner import load_config, needed_stages, plan_keys, run_pipeline
from pipeline.runtime.predict import normalize
from pipeline.training.onnx_teacher import load_teacher
from tests.conftest import FAST
from tests.onnx_teachers import export_foreign

CHEAP = ("teacher.width=8", "teacher.device=cpu", "teacher.epochs=2")
# As a Keras model often comes: NHWC, pixels in [0, 255], normalization inside the model.
KERAS = (
    "teacher.epochs=0",
    "teacher.onnx_layout=nhwc",
    "teacher.onnx_scale=1",
    "teacher.onnx_mean=[0]",
    "teacher.onnx_std=[1]",
)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """(store, path of an NHWC 0..255 ONNX teacher exported from a teacher trained two epochs, its PyTorch twin)."""
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    results = {r.name: r for r in run_pipeline(load_config(overrides=CHEAP), store, target="teacher")}
    model, spec = load_model(results["teacher"].artifact.path)
    dataset = load_dataset(results["data"].artifact)
    path = tmp_path_factory.mktemp("onnx") / "keras_teacher.onnx"
    image_shape = (spec.in_channels, *spec.image_size)
    export_foreign(model, path, image_shape, layout="nhwc", scale=1.0, mean=[0.0], std=[1.0], data_norm=dataset.norm)
    return store, path, results["teacher"].artifact


def with_onnx(path, *more):
    return (*CHEAP, *KERAS, f"teacher.onnx={path}", *more)


def own_outputs(path, images: np.ndarray) -> np.ndarray:
    """The file's outputs with its own preprocessing written out here: NHWC, pixels as they are, float32."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images.transpose(0, 2, 3, 1).astype(np.float32)})[0]


def own_accuracy(path, images: np.ndarray, labels: np.ndarray) -> float:
    return float((own_outputs(path, images).argmax(1) == labels).mean())


def test_the_onnx_teachers_accuracy_is_the_files_own(foreign):
    store, path, torch_teacher = foreign
    results = {r.name: r for r in run_pipeline(load_config(overrides=with_onnx(path)), store, target="teacher")}
    artifact = results["teacher"].artifact
    dataset = load_dataset(results["data"].artifact)
    assert sorted(artifact.manifest["files"]) == ["model.onnx"] and artifact.metrics["history"] == []
    for split, images, labels in (
        ("test", dataset.test_images, dataset.test_labels),
        ("validation", dataset.val_images, dataset.val_labels),
    ):
        reported = artifact.metrics[f"{split}_accuracy"]
        assert round(reported * len(labels)) == round(own_accuracy(path, images, labels) * len(labels))
        assert round(reported * len(labels)) == round(torch_teacher.metrics[f"{split}_accuracy"] * len(labels))
    onnx_facts = artifact.metrics["onnx"]
    assert onnx_facts["preprocessing"] == {
        "layout": "nhwc",
        "scale": 1.0,
        "mean": [0.0],
        "std": [1.0],
        "output": "logits",
    }
    assert onnx_facts["input"] == [["images", "float32", ["n", 8, 8, 1]]]
    assert artifact.metrics["macs"] > 0 and artifact.metrics["params"] > 0


def test_the_file_and_its_external_data_are_in_the_key(foreign, tmp_path):
    store, path, _ = foreign
    stages = needed_stages("report")

    def keys(onnx_path):
        return plan_keys(load_config(overrides=with_onnx(onnx_path)), stages, store)

    model = onnx.load(str(path))
    onnx.save(
        model, str(tmp_path / "teacher.onnx"), save_as_external_data=True, location="teacher.weights", size_threshold=0
    )
    first = keys(tmp_path / "teacher.onnx")
    assert keys(tmp_path / "teacher.onnx") == first and keys(path)["teacher"] != first["teacher"]
    weights = bytearray((tmp_path / "teacher.weights").read_bytes())
    weights[-1] ^= 1
    (tmp_path / "teacher.weights").write_bytes(bytes(weights))
    changed = keys(tmp_path / "teacher.onnx")
    assert all(changed[name] != first[name] for name in stages_after("teacher", stages))
    assert changed["data"] == first["data"]


def stages_after(name, stages):
    names = [stage.NAME for stage in stages]
    return names[names.index(name) :]


def test_external_data_outside_its_folder_is_one_line(foreign, tmp_path):
    store, path, _ = foreign
    model = onnx.load(str(path))
    (tmp_path / "model").mkdir()
    onnx.save(
        model, str(tmp_path / "model" / "teacher.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    escaping = onnx.load(str(tmp_path / "model" / "teacher.onnx"), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    (tmp_path / "w.bin").write_bytes((tmp_path / "model" / "w.bin").read_bytes())
    (tmp_path / "model" / "teacher.onnx").write_bytes(escaping.SerializeToString())
    config = load_config(overrides=with_onnx(tmp_path / "model" / "teacher.onnx"))
    with pytest.raises(ConfigError, match=r"has external data at '\.\./w\.bin', which contains '\.\.'; it must stay"):
        plan_keys(config, needed_stages("teacher"), store)


def test_a_file_that_is_not_onnx_is_one_line(foreign, tmp_path):
    store, _, _ = foreign
    bogus = tmp_path / "teacher.onnx"
    bogus.write_text("this is a Keras .h5 file, not ONNX\n")
    with pytest.raises(ConfigError, match=rf"^{bogus}: not an ONNX model or truncated"):
        run_pipeline(load_config(overrides=with_onnx(bogus)), store, target="teacher")
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ConfigError, match=r"^teacher.onnx='.*missing.onnx': no such file; give the path of an"):
        run_pipeline(load_config(overrides=with_onnx(missing)), store, target="teacher")


def test_a_classifier_for_other_classes_is_one_line(foreign, tmp_path):
    store, _, _ = foreign
    three_classes = build_model(ModelSpec("cnn", 4, 1, 3, (8, 8))).eval()
    path = export_foreign(
        three_classes, tmp_path / "three.onnx", (1, 8, 8), layout="nhwc", scale=1.0, mean=[0.0], std=[1.0]
    )
    message = (
        rf"^{path}: output 'scores' is float32 \['n', 3\], but the data has 10 classes: the teacher must output "
        r"float32 logits of shape \[batch, 10\]"
    )
    with pytest.raises(ConfigError, match=message):
        run_pipeline(load_config(overrides=with_onnx(path)), store, target="teacher")


def test_a_model_onnxruntime_cannot_run_is_one_line(foreign, tmp_path):
    """onnx.checker passes ops of domains it does not know; onnxruntime refuses them: the stage says which file."""
    store, _, _ = foreign
    images = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])
    scores = onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["n", 10])
    node = onnx.helper.make_node("Mystery", ["images"], ["scores"], domain="com.example")
    graph = onnx.helper.make_graph([node], "mystery", [images], [scores])
    opsets = [onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("com.example", 1)]
    path = tmp_path / "mystery.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets), str(path))
    overrides = with_onnx(path, "teacher.onnx_layout=nchw")
    with pytest.raises(StageError, match=rf"^teacher: onnxruntime cannot run {path}: .*com.example:Mystery"):
        run_pipeline(load_config(overrides=overrides), store, target="teacher")


def test_an_onnx_path_in_a_config_file_is_relative_to_that_file(tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "keras.yaml"
    config.write_text("teacher:\n  onnx: ../models/teacher.onnx\n  epochs: 0\n")
    assert load_config(config).section("teacher").onnx == str(tmp_path / "models" / "teacher.onnx")


def test_the_wrong_layout_names_the_right_one(foreign):
    store, path, _ = foreign
    overrides = with_onnx(path, "teacher.onnx_layout=nchw")
    message = (
        rf"^{path}: input 'images' has shape \['n', 8, 8, 1\], but teacher.onnx_layout=nchw and the data need "
        r"\[batch, 1, 8, 8\]: set teacher.onnx_layout=nhwc$"
    )
    with pytest.raises(ConfigError, match=message):
        run_pipeline(load_config(overrides=overrides), store, target="teacher")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("teacher.epochs=3",),
            r"^teacher.onnx is used as it is \(edgeforge does not train ONNX models\): set teacher.epochs=0 \(now 3\)$",
        ),
        (("teacher.weights=w.pt",), r"^teacher.onnx and teacher.weights both say what the teacher is: set only one$"),
        (
            ("distill.feature_loss=hint",),
            r"^distill.feature_loss='hint' needs the teacher's intermediate layers, which an ONNX teacher "
            r"\(teacher.onnx\) does not expose: set distill.feature_loss=none$",
        ),
        (
            ("prune.feature_loss=attention",),
            r"^prune.feature_loss='attention' needs the teacher's intermediate layers, which an ONNX teacher "
            r"\(teacher.onnx\) does not expose: set prune.feature_loss=none$",
        ),
        (("teacher.onnx_layout=hwc",), r"^teacher.onnx_layout='hwc' is not allowed: expected nchw or nhwc$"),
        (
            ("teacher.onnx_output=softmax",),
            r"^teacher.onnx_output='softmax' is not allowed: expected logits or probabilities$",
        ),
        (("teacher.onnx_std=[0.5, 0]",), r"^teacher.onnx_std=\(0.5, 0.0\) is not allowed: expected null or numbers"),
    ],
)
def test_contradictory_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=(*KERAS, "teacher.onnx=t.onnx", *overrides))


def test_onnx_settings_without_an_onnx_teacher_are_one_line():
    with pytest.raises(ConfigError, match=r"^teacher.onnx_layout describes an ONNX teacher: set teacher.onnx, or"):
        load_config(overrides=("teacher.onnx_layout=nhwc",))


def test_a_mean_for_other_channels_is_one_line(foreign):
    store, path, _ = foreign
    overrides = with_onnx(path, "teacher.onnx_mean=[0, 0, 0]")
    message = (
        r"^teacher.onnx_mean=\[0.0, 0.0, 0.0\] has 3 values, but the data has 1 channel\(s\): give one value or 1$"
    )
    with pytest.raises(ConfigError, match=message):
        run_pipeline(load_config(overrides=overrides), store, target="teacher")


@pytest.mark.slow
def test_an_onnx_teacher_drives_the_run_to_the_report(foreign):
    store, path, _ = foreign
    overrides = (*FAST, *KERAS, f"teacher.onnx={path}", "prune.scratch_baseline=true")
    results = {r.name: r for r in run_pipeline(load_config(overrides=overrides), store)}
    dataset = load_dataset(results["data"].artifact)
    assert results["distill"].artifact.metrics["history"][0]["kd"] > 0  # it learned from the teacher's logits
    assert results["prune"].artifact.metrics["scratch"]["history"][0]["kd"] > 0
    report = json.loads(results["report"].artifact.file("report.json").read_text())
    teacher = next(m for m in report["models"] if m["name"] == "teacher")
    expected = own_accuracy(path, dataset.test_images, dataset.test_labels)
    assert round(teacher["accuracy"] * len(dataset.test_labels)) == round(expected * len(dataset.test_labels))
    assert report["teacher_onnx"]["preprocessing"]["layout"] == "nhwc"
    markdown = results["report"].artifact.file("report.md").read_text()
    assert "The teacher is the ONNX file `keras_teacher.onnx`" in markdown
    assert "NHWC float32, (pixel * 1 - mean) / std with mean [0.0] and std [1.0]; it outputs logits" in markdown
    assert (
        "The teacher is the ONNX file keras_teacher.onnx" in results["report"].artifact.file("report.html").read_text()
    )
    export = results["export"].artifact.metrics["models"]["teacher"]
    assert export["copied_from"] == "keras_teacher.onnx" and "max_abs_diff_batch_1" not in export


def test_the_cli_says_a_bad_onnx_teacher_in_one_line(foreign, tmp_path):
    """What the user sees: one line naming the file and what is wrong, exit 2, no traceback."""
    _, path, _ = foreign
    args = ["--artifacts", str(tmp_path), "stage", "teacher", *[a for s in with_onnx(path) for a in ("--set", s)]]
    result = CliRunner().invoke(cli, [*args, "--set", "teacher.onnx_layout=nchw"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(f"error: {path}: input 'images' has shape ['n', 8, 8, 1], but teacher.onnx_layout")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


FOREIGN = Path(__file__).parents[1] / "fixtures" / "foreign_teachers"  # real exports: README.md there says how
# Each file's own convention as its README states it: both take NHWC pixels 0..255 with normalization inside.
REAL_EXPORTS = {
    # Keras 3 / tf2onnx: input `keras_tensor`, output `Identity:0`, different symbolic batch names in and out,
    # a softmax at the end, an unused ai.onnx.ml opset import.
    "keras_digits.onnx": "probabilities",
    # Flax / jax2onnx: IR 10, an input Transpose, SAME_UPPER convolutions, raw logits.
    "jax_digits.onnx": "logits",
}


@pytest.mark.parametrize(("name", "output"), REAL_EXPORTS.items())
def test_real_keras_and_jax_exports_teach_with_the_files_own_accuracy_and_outputs(tmp_path, name, output):
    path = FOREIGN / name
    sets = (*with_onnx(path, f"teacher.onnx_output={output}"), "distill.width=8", "distill.epochs=1")
    sets += ("distill.device=cpu", "distill.baseline=false")
    results = {r.name: r for r in run_pipeline(load_config(overrides=sets), ArtifactStore(tmp_path), target="distill")}
    teacher, dataset = results["teacher"].artifact, load_dataset(results["data"].artifact)
    for split, images, labels in (
        ("test", dataset.test_images, dataset.test_labels),
        ("validation", dataset.val_images, dataset.val_labels),
    ):
        reported = teacher.metrics[f"{split}_accuracy"]
        assert round(reported * len(labels)) == round(own_accuracy(path, images, labels) * len(labels)), split
        assert reported > 0.95, split  # the file was trained on digits (in its own split, which overlaps ours)
    # The soft targets distillation sees: the teacher the stage stored takes the students' normalized input and
    # gives logits whose softmax is the file's own probabilities on its own input (the log of them for Keras).
    images = dataset.test_images[:100]
    logits = load_teacher(teacher.path)(torch.from_numpy(normalize(images, *dataset.norm))).detach()
    own = torch.from_numpy(own_outputs(path, images))
    assert torch.allclose(own.sum(1), torch.ones(len(own))) == (output == "probabilities")  # as the README says
    expected = own if output == "probabilities" else torch.softmax(own, dim=1)
    torch.testing.assert_close(torch.softmax(logits, dim=1), expected, atol=1e-5, rtol=1e-4)
    assert len(results["distill"].artifact.metrics["history"]) == 1  # and a student trained on them


def test_a_speedup_budget_for_an_onnx_teacher_times_the_teacher_stages_file(foreign, monkeypatch):
    from pipeline.runner import student_floors
    from pipeline.search import prune_candidates

    store, path, _ = foreign
    timed = []

    def p50(self, file):  # the file's size in MB stands in for its latency
        timed.append(file)
        return file.stat().st_size / 1e6, "size"

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    budget = ("prune.target_format=fp32", "prune.search_repeats=1", "prune.target_speedup_vs_teacher=0.5")
    config = load_config(overrides=with_onnx(path, *budget))
    result = student_floors(config, store)  # `edgeforge floor`: nothing trains; the ONNX teacher is only wrapped
    wrapped = run_pipeline(config, store, target="teacher")[-1]
    assert wrapped.cached  # the floor ran the teacher stage: its file is the one timed, as the prune stage times it
    teacher_file = wrapped.artifact.file("model.onnx")
    assert teacher_file in timed and result["budget_from_teacher"]["p50_ms"] == teacher_file.stat().st_size / 1e6
    assert result["budget_ms"] == result["budget_from_teacher"]["budget_ms"] == 2 * teacher_file.stat().st_size / 1e6
