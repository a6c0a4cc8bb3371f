"""No stage reads the test labels for a decision: permuting them changes no model, no validation accuracy and no
choice, only the reported test accuracies."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config, run_pipeline
from pipeline.runtime import device, memory, tuning
from pipeline.search import quantize_variants
from tests.conftest import FAST

CLASSES = ("circle", "cross", "square")
pytestmark = pytest.mark.slow  # two pipelines on an image folder


def write_folder(root, test_label_of):
    """3 classes of 8x8 images, 40 train and 10 test each; test image i of class c goes to test_label_of(c, i)."""
    rng = np.random.default_rng(0)
    colours = {"circle": (200, 40, 40), "cross": (40, 200, 40), "square": (40, 40, 200)}
    for split, count in (("train", 40), ("test", 10)):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                pixels = np.clip(rng.normal(colours[name], 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                folder = root / split / (name if split == "train" else CLASSES[test_label_of(c, i)])
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(folder / f"{name}-{i}.png")


def fake_time_session(path, provider, settings, feed, preset, batch, options=None):
    """A clock that cannot disagree with itself: each distinct model file and setting gets its own fixed latency."""
    key = hashlib.sha256(path.read_bytes() + repr(settings).encode()).hexdigest()
    base = 0.01 + int(key[:6], 16) % 1000 / 1e5
    return base * (1 + np.linspace(0, 0.01, 50)) * batch, 0.0


def run(tmp_path, name, test_label_of, monkeypatch):
    root = tmp_path / name
    write_folder(root, test_label_of)
    for module in (device, quantize_variants, tuning):
        monkeypatch.setattr(module, "time_session", fake_time_session)
    monkeypatch.setattr(memory, "peak_memory", lambda *args, **kwargs: None)
    learn = [f"{section}.batch_size=16" for section in ("teacher", "distill", "prune")]
    learn += ["teacher.epochs=8", "distill.epochs=8", "prune.finetune_epochs=2"]  # enough to learn the colours
    sets = [
        *FAST,
        *learn,
        "data.name=imagefolder",
        f"data.root={root}",
        "data.validation_fraction=0.2",
        "quantize.search=true",
        "quantize.search_methods=[minmax]",
        "prune.target_latency_ms=1000",
        "prune.search=uniform",
        "prune.search_repeats=1",
        "prune.max_ratio=0.5",
        "prune.search_step=0.25",
        "prune.scratch_baseline=true",
    ]
    results = run_pipeline(load_config(overrides=sets), ArtifactStore(tmp_path / f"{name}-artifacts"))
    return {r.name: r.artifact for r in results}


def test_permuting_the_test_labels_changes_no_choice_and_no_validation_accuracy(tmp_path, monkeypatch):
    original = run(tmp_path, "original", lambda c, i: c, monkeypatch)
    permuted = run(tmp_path, "permuted", lambda c, i: (c + 1 + i % 2) % 3, monkeypatch)  # every test label wrong

    for stage in ("teacher", "distill", "prune"):
        before, after = original[stage], permuted[stage]
        assert before.manifest["files"]["model.pt"] == after.manifest["files"]["model.pt"], stage  # same weights
        assert before.metrics["validation_accuracy"] == after.metrics["validation_accuracy"] > 0.6, stage
        assert before.metrics["test_accuracy"] > after.metrics["test_accuracy"], stage  # it learned; they are wrong
    assert original["prune"].metrics["latency_search"]["ratio"] == permuted["prune"].metrics["latency_search"]["ratio"]
    assert (
        original["prune"].metrics["scratch"]["validation_accuracy"]
        == (permuted["prune"].metrics["scratch"]["validation_accuracy"])
    )
    for name in ("int8", "student_int8"):
        chosen = [run_["quantize"].metrics["models"][name]["search"]["chosen"] for run_ in (original, permuted)]
        assert chosen[0] == chosen[1], name

    reports = [json.loads(run_["report"].file("report.json").read_text()) for run_ in (original, permuted)]
    assert reports[0]["edge_model"] == reports[1]["edge_model"]
    # The budget is gated (config.signoff, which `edgeforge signoff` re-checks); the reproduce command sets the
    # budget, not its gate: the run it starts adds its own (a relative budget's is its bench's teacher's).
    assert reports[0]["config"]["signoff"]["latency_limits"] == ["cpu:1:p50<=1000.0"]
    assert "--set prune.target_latency_ms=1000" in reports[0]["reproduce"]
    assert "latency_limits" not in reports[0]["reproduce"]
    assert reports[0]["edge_choice"] == reports[1]["edge_choice"]
    for before, after in zip(reports[0]["models"], reports[1]["models"], strict=True):
        assert before["validation_accuracy"] == after["validation_accuracy"], before["name"]
        assert before["validation_correct"] == after["validation_correct"], before["name"]
    assert [m["accuracy"] for m in reports[0]["models"]] != [m["accuracy"] for m in reports[1]["models"]]
    assert {c["split"] for c in reports[0]["choices"] if c["choice"] != "sign-off gates"} <= {"validation", "none"}
