"""release/ runs by itself: predict.py, with only onnxruntime, numpy and Pillow, reproduces the report's accuracy;
deploy.json ships the settings the edge model was measured with."""

import contextlib
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.runner import publish_release
from tests.conftest import FAST, session_folder, shared_run
from tests.stages.test_held_out import CLASSES, write_folder

pytestmark = pytest.mark.slow  # a pipeline on an image folder

# predict.py run as a device would: torch and edgeforge cannot be imported.
WITHOUT_TORCH = (
    "import runpy, sys; "
    "sys.modules.update(torch=None, pipeline=None, stages=None); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """The image folder and its pipeline run, made once per session (shared_run); the release is this worker's."""
    root = session_folder(tmp_path_factory) / "shapes"
    if not root.exists():  # written aside and renamed: a worker sees the whole folder or none
        aside = tmp_path_factory.mktemp("shapes")
        write_folder(aside, lambda c, i: c)
        with contextlib.suppress(OSError):  # another worker renamed its identical folder first
            aside.rename(root)
    learn = [f"{s}.batch_size=16" for s in ("teacher", "distill", "prune")] + ["teacher.epochs=6", "distill.epochs=6"]
    sets = [*FAST, *learn, "data.name=imagefolder", f"data.root={root}", "bench.tune=true"]
    store, results = shared_run(tmp_path_factory, "release", sets)
    return root, publish_release(store, results[-1].artifact), store


def test_predict_py_without_torch_reproduces_the_reported_test_accuracy(release):
    root, folder, _ = release
    command = [sys.executable, "-c", WITHOUT_TORCH, str(folder / "predict.py"), str(root / "test"), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 3 * 10
    correct = sum(row["top"][0]["class"] == row["path"].split("/")[-2] for row in rows)
    report = json.loads((folder / "report.json").read_text())
    edge = next(m for m in report["models"] if m["name"] == report["edge_model"])
    assert correct / len(rows) == edge["accuracy"]  # exactly: the same preprocessing, model and settings
    assert (folder / "labels.txt").read_text().split() == list(CLASSES)


def test_deploy_json_ships_the_settings_the_edge_model_was_measured_with(release):
    _, folder, _ = release
    deploy = json.loads((folder / "deploy.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    edge = next(m for m in report["models"] if m["name"] == report["edge_model"])
    chosen = next(entry for entry in edge["settings_search"] if entry["chosen"])
    assert deploy["session_options"] == edge["settings"] == chosen["settings"]
    assert chosen["refine_ms"] == min(e["refine_ms"] for e in edge["settings_search"] if e["refine_ms"] is not None)
    assert deploy["edge_model"] == report["edge_model"] and deploy["classes"] == list(CLASSES)
    assert deploy["input"]["shape"] == ["batch", 3, 8, 8] and deploy["preprocessing"]["color"] == "RGB"
    assert deploy["measured_on"]["cpu_flags_sha256"] == report["machine"]["cpu_flags_sha256"]


def test_edgeforge_predict_gives_the_same_rows_and_refuses_a_swapped_model(release, tmp_path):
    root, folder, store = release
    result = CliRunner().invoke(cli, ["--artifacts", str(store.root), "predict", str(root / "test"), "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 30 and all(len(line.split()) == 5 for line in lines)  # path, 2 x (class, probability)
    copy = tmp_path / "release"
    copy.mkdir()
    for name in ("deploy.json", "model.onnx"):
        (copy / name).write_bytes((folder / name).read_bytes())
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    refused = CliRunner().invoke(cli, ["predict", str(root / "test"), "--release", str(copy)])
    assert refused.exit_code == 2 and "but deploy.json names" in refused.stderr
    missing = CliRunner().invoke(cli, ["--artifacts", str(tmp_path / "none"), "predict", str(root)])
    assert missing.exit_code == 2 and "run `edgeforge run` first" in missing.stderr
