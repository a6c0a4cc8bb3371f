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
    assert len(dataset.train_images) + len(dataset.val_images) + len(dataset.test_images) == 1797
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
    assert dataset.test_images.shape == (4, 3, 8, 8)
    assert artifact.manifest["external"]["files"] == 16
    assert json.loads(artifact.file("dataset.json").read_text())["split"] == {
        "method": "the source's own train/test split",
        "validation": {"fraction": 0.1, "images": 2, "seed": 1},  # at least one image of each class
    }
    assert dataset.val_images.shape == (2, 3, 8, 8) and sorted(dataset.val_labels.tolist()) == [0, 1]
    assert dataset.train_images.shape == (10, 3, 8, 8)


def test_validation_split_is_held_out_from_training_stratified_and_seeded(tmp_path):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline

    store = ArtifactStore(tmp_path / "artifacts")
    artifact = run_pipeline(load_config(), store, target="data")[-1].artifact  # on by default: 10% of training
    dataset = load_dataset(artifact)
    with np.load(artifact.file("labels.npz"), allow_pickle=False) as arrays:
        train_index, test_index, val_index = arrays["train_index"], arrays["test_index"], arrays["val_index"]
    raw = catalog.load_digits()
    training = raw.train_images[train_index]  # the training split before the validation images were taken out
    kept = np.setdiff1d(np.arange(len(train_index)), val_index)
    assert len(val_index) == 143 and len(np.intersect1d(kept, val_index)) == 0  # disjoint from training
    assert len(np.intersect1d(train_index, test_index)) == 0  # and both from the test split
    assert np.array_equal(training[val_index], dataset.val_images) and np.array_equal(
        training[kept], dataset.train_images
    )
    counts = np.bincount(dataset.val_labels)
    assert counts.min() >= 14 and counts.max() <= 15  # stratified: about 10% of every class
    assert json.loads(artifact.file("dataset.json").read_text())["split"]["validation"] == {
        "fraction": 0.1,
        "images": 143,
        "seed": 1,
    }
    again = load_dataset(run_pipeline(load_config(), ArtifactStore(tmp_path / "again"), target="data")[-1].artifact)
    assert np.array_equal(again.val_images, dataset.val_images)  # stable across runs
    reseeded = load_dataset(run_pipeline(load_config(overrides=["data.seed=5"]), store, target="data")[-1].artifact)
    assert not np.array_equal(reseeded.val_labels, dataset.val_labels) or not np.array_equal(
        reseeded.val_images, dataset.val_images
    )


def test_the_validation_split_cannot_be_turned_off():
    from pipeline.errors import ConfigError
    from pipeline.runner import load_config

    with pytest.raises(
        ConfigError, match=r"data.validation_fraction=0.0 is not allowed: expected a number in \(0, 1\)"
    ):
        load_config(overrides=["data.validation_fraction=0"])


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


def test_an_imagefolder_of_mixed_sizes_is_stored_resized_and_cropped_as_memory_mapped_splits(tmp_path):
    from PIL import Image

    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline

    rng = np.random.default_rng(0)
    for i in range(12):
        width, height = (int(v) for v in rng.integers(12, 40, 2))
        folder = tmp_path / "pets" / "train" / ("cat", "dog")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    overrides = ["data.name=imagefolder", f"data.root={tmp_path / 'pets'}", "data.image_size=16"]
    artifact = run_pipeline(load_config(overrides=overrides), ArtifactStore(tmp_path / "artifacts"), target="data")
    artifact = artifact[-1].artifact

    dataset = load_dataset(artifact)
    assert sorted(artifact.manifest["files"]) == [
        "dataset.json",
        "labels.npz",
        "test_images.npy",
        "train_images.npy",
        "val_images.npy",
    ]  # fmt: skip  (the decoded source files were removed before publishing)
    for images, labels in ((dataset.train_images, dataset.train_labels), (dataset.test_images, dataset.test_labels)):
        assert isinstance(images, np.memmap) and images.shape == (len(labels), 3, 16, 16)
    assert len(dataset.train_labels) + len(dataset.val_labels) + len(dataset.test_labels) == 12
    assert artifact.manifest["metrics"]["image_shape"] == [3, 16, 16]
    assert artifact.manifest["params"]["crop_fraction"] == 0.875


def test_crop_fraction_outside_zero_to_one_is_one_line():
    from pipeline.errors import ConfigError
    from pipeline.runner import load_config

    for value in ("0", "1.5"):
        with pytest.raises(
            ConfigError, match=rf"data.crop_fraction={value}\.?\d* is not allowed: expected a number in"
        ):
            load_config(overrides=[f"data.crop_fraction={value}"])
