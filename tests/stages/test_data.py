import numpy as np

from stages import data


def test_stratified_split_keeps_class_proportions_and_is_deterministic():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = data.stratified_split(labels, 0.2, seed=1)
    assert sorted(np.bincount(labels[test]).tolist()) == [4, 6, 10]
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    again = data.stratified_split(labels, 0.2, seed=1)
    assert np.array_equal(test, again[1])
    assert not np.array_equal(test, data.stratified_split(labels, 0.2, seed=2)[1])


def test_data_artifact_holds_uint8_images_and_train_statistics(tiny_run):
    _, results = tiny_run
    dataset = data.load(results["data"].artifact)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape[1:] == (1, 8, 8)
    assert len(dataset.train_images) + len(dataset.test_images) == 1797
    assert dataset.train_images.max() == 255
    assert np.isclose(dataset.mean[0], (dataset.train_images / 255.0).mean())
    assert results["data"].artifact.manifest["metrics"]["test_size"] == len(dataset.test_labels)
