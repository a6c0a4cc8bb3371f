"""The data artifact's files: split images as raw .npy read memory-mapped, by batch, the same as in memory."""

import json

import numpy as np
import pytest

from pipeline.cache import Artifact
from pipeline.datasets.artifact import (
    LABELS_FILE,
    SPLITS,
    images_file,
    load_dataset,
    open_images,
    pixel_statistics,
    read_rows,
    write_split,
)

RNG = np.random.default_rng(0)


def saved(path, images):
    np.save(path, images, allow_pickle=False)
    return open_images(path)


def test_read_rows_of_a_memory_mapped_file_are_the_in_memory_rows(tmp_path):
    images = RNG.integers(0, 256, (50, 3, 5, 4), dtype=np.uint8)
    mapped = saved(tmp_path / "x.npy", images)
    assert isinstance(mapped, np.memmap)
    for index in (np.array([7, 3, 3, 49, 0]), slice(10, 30), slice(40, 80), np.arange(0)):
        rows = read_rows(mapped, index)
        assert type(rows) is np.ndarray and not isinstance(rows, np.memmap)  # a copy, not a view of the mapping
        np.testing.assert_array_equal(rows, images[index])
    np.testing.assert_array_equal(read_rows(mapped[5:], slice(0, 3)), images[5:8])  # a view of the mapping too
    np.testing.assert_array_equal(read_rows(images, np.array([1, 2])), images[[1, 2]])


def test_write_split_copies_the_rows_chunk_by_chunk(tmp_path):
    source = saved(tmp_path / "source.npy", RNG.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8))
    rows = np.array([39, 0, 5, 6, 7, 20, 21, 1])
    write_split(tmp_path / "split.npy", source, rows, chunk_bytes=3 * 16)  # three images per chunk
    np.testing.assert_array_equal(np.load(tmp_path / "split.npy"), np.asarray(source)[rows])


def test_pixel_statistics_match_numpy_for_any_chunk_size(tmp_path):
    images = RNG.integers(0, 256, (33, 3, 6, 6), dtype=np.uint8)
    pixels = images / 255.0
    for chunk_images in (1, 5, 1024):
        mean, std = pixel_statistics(saved(tmp_path / "x.npy", images), chunk_bytes=chunk_images * 3 * 6 * 6)
        np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-9)


def test_loading_the_artifact_maps_the_images_and_reads_no_pixels(tmp_path, monkeypatch):
    arrays = {
        split: RNG.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8) for split, n in zip(SPLITS, (8, 3, 4), strict=True)
    }
    for split, images in arrays.items():
        np.save(tmp_path / images_file(split), images)
    labels = {f"{split}_labels": np.arange(len(images)) % 2 for split, images in arrays.items()}
    np.savez(tmp_path / LABELS_FILE, **labels)
    description = {"class_names": ["a", "b"], "mean": [0.5], "std": [0.25]}
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    read = []
    real_fromfile = np.fromfile
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: read.append(a) or real_fromfile(*a, **k))

    files = {path.name: "not checked here" for path in tmp_path.iterdir()}
    dataset = load_dataset(Artifact("data", "k", tmp_path, {"files": files}))

    assert read == []  # np.load without mmap_mode reads .npy pixels with fromfile
    for split, images in zip(SPLITS, (dataset.train_images, dataset.val_images, dataset.test_images), strict=True):
        assert isinstance(images, np.memmap) and images.mode == "r"
        np.testing.assert_array_equal(images, arrays[split])
    with pytest.raises(ValueError, match="read-only"):
        dataset.train_images[0] = 0  # a stage cannot change the cached data through its mapping
    assert dataset.train_labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1] and dataset.norm == ([0.5], [0.25])
