"""The teacher from weights the user brings: used as it is with epochs 0, fine-tuned otherwise, the file in the key."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.cache import ArtifactStore
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import ConfigError
from pipeline.models.factory import build_model
from pipeline.models.storage import load_model
from pipeline.runner import load_config, needed_stages, plan_keys, run_pipeline

CHEAP = ("teacher.width=8", "teacher.device=cpu", "teacher.epochs=2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, path of a .safetensors file) holding a teacher trained elsewhere: two epochs on digits."""
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    results = {r.name: r for r in run_pipeline(load_config(overrides=CHEAP), store, target="teacher")}
    model, _ = load_model(results["teacher"].artifact.path)
    path = tmp_path_factory.mktemp("weights") / "teacher.safetensors"
    save_file(model.state_dict(), path)
    return store, path


def independent_accuracy(path, spec, images: np.ndarray, labels: np.ndarray, mean, std) -> float:
    """Accuracy of the weights in `path`, with the data stage's preprocessing written out here: pixels / 255, then
    each channel's mean and std."""
    model = build_model(spec)
    model.load_state_dict(load_file(path))
    x = (images.astype(np.float32) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
    return float((predicted == labels).mean())


def test_epochs_zero_uses_the_weights_as_they_are(trained):
    store, path = trained
    overrides = (*CHEAP, "teacher.epochs=0", f"teacher.weights={path}")
    results = {r.name: r for r in run_pipeline(load_config(overrides=overrides), store, target="teacher")}
    artifact = results["teacher"].artifact
    assert artifact.metrics["history"] == [] and artifact.metrics["start"] == "from teacher.safetensors"
    saved = torch.load(artifact.file("model.pt"), weights_only=True)
    assert all(torch.equal(saved[key], tensor) for key, tensor in load_file(path).items())  # nothing trained

    _, spec = load_model(artifact.path)
    dataset = load_dataset(results["data"].artifact)
    for split in ("test", "val"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        expected = independent_accuracy(path, spec, images, labels, dataset.mean, dataset.std)
        reported = artifact.metrics["test_accuracy" if split == "test" else "validation_accuracy"]
        assert round(reported * len(labels)) == round(expected * len(labels))  # to the image


def test_the_weights_file_is_in_the_key_and_positive_epochs_fine_tune(trained, tmp_path):
    store, path = trained
    copy = tmp_path / "teacher.safetensors"
    copy.write_bytes(path.read_bytes())
    stages = needed_stages("teacher")

    def key(*overrides):
        return plan_keys(load_config(overrides=(*CHEAP, *overrides)), stages, store)["teacher"]

    first = key(f"teacher.weights={copy}")
    assert first != key() and key(f"teacher.weights={copy}") == first
    state = load_file(copy)
    save_file({name: tensor + 1 for name, tensor in state.items()}, copy)
    assert key(f"teacher.weights={copy}") != first

    overrides = (*CHEAP, "teacher.epochs=1", f"teacher.weights={path}")
    results = {r.name: r for r in run_pipeline(load_config(overrides=overrides), store, target="teacher")}
    metrics = results["teacher"].artifact.metrics
    assert len(metrics["history"]) == 1 and "from teacher.safetensors, fine-tuned 1 epoch(s)" in metrics["summary"]


def test_a_weights_path_in_a_config_file_is_relative_to_that_file(tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "pretrained.yaml"
    config.write_text("teacher:\n  weights: ../weights/teacher.safetensors\n  epochs: 0\n")
    teacher = load_config(config).section("teacher")
    assert teacher.weights == str(tmp_path / "weights" / "teacher.safetensors") and teacher.epochs == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("teacher.epochs=0",),
            "teacher.epochs=0 is not allowed: expected an integer >= 1, or 0 with teacher.weights, "
            "teacher.pretrained or teacher.onnx (a teacher used as it is)",
        ),
        (
            ("teacher.pretrained=true",),
            "teacher.pretrained=true needs a torchvision:NAME or timm:NAME model, not 'cnn'; bring your own weights "
            "with teacher.weights",
        ),
        (
            ("distill.weights=student.onnx",),
            "distill.weights='*/student.onnx' is not allowed: expected a .safetensors file or a state_dict saved as "
            ".pt or .pth",
        ),
        (
            ("distill.model=timm:efficientnet_b0", "distill.width=8"),
            "distill.width=8 does not apply to 'timm:efficientnet_b0', which comes in its published width: remove it",
        ),
        (("distill.reinit_head=true",), "distill.reinit_head=true has no weights to apply to: set distill.weights"),
        (
            ("teacher.weights=absent.pt",),
            "teacher.weights='*/absent.pt': no such file; give the path of a .safetensors or .pt file",
        ),
    ],
)
def test_bad_starting_points_are_one_line(overrides, message, tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ConfigError, match=re.escape(message).replace(r"\*", ".*")) as raised:
        plan_keys(load_config(overrides=overrides), needed_stages("distill"), store)
    assert "\n" not in str(raised.value)
