import json

import numpy as np
import pytest

from pipeline.datasets import catalog
from pipeline.datasets.artifact import load_dataset
from pipeline.datasets.splits import stratified_split
from stages import data


def test_stratified_split_keeps_class_proportions_and_is_deterministic():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(labels, 0.2, seed=1)
    assert sorted(np.bincount(labels[test]).tolist()) == [4, 6, 10]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    again = stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(test, again[1])
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=2)[1])


def test_data_artifact_holds_uint8_images_and_train_statistics(tiny_run):
    _, results = tiny_run
    dataset = load_dataset(results["data"].artifact)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape[1:] == (1, 8, 8)
    assert len(dataset.train_images) + len(dataset.test_images) == 1797
    assert dataset.train_images.max() == 255
    assert np.isclose(dataset.mean[0], (dataset.train_images / 255.0).mean())
    assert results["data"].artifact.manifest["metrics"]["test_size"] == len(dataset.test_labels)


def write_folder(root, size=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_becomes_a_data_artifact_with_class_names(tmp_path):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline

    write_folder(tmp_path / "pets")
    config = load_config(overrides=["data.name=imagefolder", f"data.root={tmp_path / 'pets'}"])
    artifact = run_pipeline(config, ArtifactStore(tmp_path / "artifacts"), target="data")[-1].artifact
    dataset = load_dataset(artifact)
    assert dataset.class_names == ["cat", "dog"]
    assert dataset.train_images.shape == (12, 3, 8, 8) and dataset.test_images.shape == (4, 3, 8, 8)
    assert artifact.manifest["external"]["files"] == 16
    assert json.loads(artifact.file("dataset.json").read_text())["split"] == {
        "method": "the source's own train/test split",
        "validation": {"fraction": 0.0, "images": 0, "seed": 1},
    }
    assert dataset.val_images.shape == (0, 3, 8, 8)


def test_validation_split_is_held_out_from_training_stratified_and_seeded(tmp_path):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline

    store = ArtifactStore(tmp_path / "artifacts")
    overrides = ["data.validation_fraction=0.1"]
    with_val = load_dataset(run_pipeline(load_config(overrides=overrides), store, target="data")[-1].artifact)
    without = load_dataset(run_pipeline(load_config(), store, target="data")[-1].artifact)
    assert len(with_val.val_labels) == 143 and len(with_val.train_labels) == len(without.train_labels) - 143
    assert np.bincount(with_val.val_labels).min() >= 14  # every class, about 10% of each
    assert np.array_equal(with_val.test_labels, without.test_labels)  # the test split is untouched
    # Exactly the training split before, partitioned: validation images are the ones at val_index, the rest train.
    artifact = run_pipeline(load_config(overrides=overrides), store, target="data")[-1].artifact
    with np.load(artifact.file("arrays.npz"), allow_pickle=False) as arrays:
        held_out = arrays["val_index"]
    kept = np.setdiff1d(np.arange(len(without.train_labels)), held_out)
    assert np.array_equal(without.train_images[held_out], with_val.val_images)
    assert np.array_equal(without.train_images[kept], with_val.train_images)


def test_one_changed_image_changes_the_key_and_untouched_files_are_not_read(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline.cache import ArtifactStore
    from pipeline.runner import STAGES, load_config, plan_keys

    write_folder(tmp_path / "pets")
    store = ArtifactStore(tmp_path / "artifacts")
    config = load_config(overrides=["data.name=imagefolder", f"data.root={tmp_path / 'pets'}"])
    first = plan_keys(config, list(STAGES), store)

    hashed = []
    monkeypatch.setattr(catalog, "sha256_file", lambda path: hashed.append(path) or "x")
    assert plan_keys(config, list(STAGES), store) == first
    assert hashed == []  # size and mtime unchanged: nothing read

    monkeypatch.undo()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "pets" / "train" / "dog" / "3.png")
    second = plan_keys(config, list(STAGES), store)
    assert all(first[name] != second[name] for name in first)  # data and everything downstream


def test_dataset_problems_are_config_errors(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.runner import load_config

    with pytest.raises(ConfigError, match=r"data.root=None is not allowed: expected the folder holding the cifar10"):
        load_config(overrides=["data.name=cifar10"])
    with pytest.raises(ConfigError, match=r"data.download=True is not allowed: expected false for imagefolder"):
        load_config(overrides=["data.name=imagefolder", "data.root=x", "data.download=true"])
    write_folder(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"cannot decode image .*bad.png"):
        data.run(
            load_config(overrides=["data.name=imagefolder", f"data.root={tmp_path / 'pets'}"]).section("data"),
            {},
            tmp_path,
        )
