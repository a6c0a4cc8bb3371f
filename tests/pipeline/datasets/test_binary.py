"""CIFAR-10 binary and MNIST idx files: tiny files written here, read back exactly; bad files are ConfigErrors."""

import gzip
import struct

import numpy as np
import pytest

from pipeline.datasets.binary import CIFAR_FILES, FASHION_CLASSES, IDX_FILES, read_cifar10, read_mnist
from pipeline.datasets.catalog import source_files
from pipeline.errors import ConfigError

RNG = np.random.default_rng(0)


def noise(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


# --- CIFAR-10 binary -------------------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_bytes(images, labels):
    return b"".join(bytes([label]) + image.tobytes() for image, label in zip(images, labels, strict=True))


def write_cifar(folder, per_batch=3):
    """Six batches with distinct random records; returns (train images, train labels, test images, test labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = []
    for name in [*CIFAR_FILES[:6]]:
        images = noise((per_batch, 3, 32, 32))
        labels = RNG.integers(0, 10, per_batch).astype(np.uint8)
        (folder / name).write_bytes(cifar_bytes(images, labels))
        batches.append((images, labels))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR_NAMES) + "\n\n")
    train = batches[:5]
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        *batches[5],
    )


def test_cifar10_binary_reads_back_exactly(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    train_images, train_labels, test_images, test_labels = write_cifar(folder)

    raw = read_cifar10(tmp_path)

    assert raw.train_images.shape == (15, 3, 32, 32) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images, train_images)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    assert raw.train_labels.dtype == np.int64
    np.testing.assert_array_equal(raw.test_images, test_images)
    np.testing.assert_array_equal(raw.test_labels, test_labels)
    assert raw.class_names == CIFAR_NAMES
    assert source_files("cifar10", tmp_path) == sorted(folder / name for name in CIFAR_FILES)


def test_cifar10_pixel_order_is_r_then_g_then_b_plane(tmp_path):
    write_cifar(tmp_path)  # directly in root works too
    planes = bytes([7]) + bytes([1]) * 1024 + bytes([2]) * 1024 + bytes([3]) * 1024
    with (tmp_path / "test_batch.bin").open("ab") as batch:
        batch.write(planes)

    raw = read_cifar10(tmp_path)

    image = raw.test_images[-1]
    assert raw.test_labels[-1] == 7
    assert (image[0] == 1).all() and (image[1] == 2).all() and (image[2] == 3).all()


def test_cifar10_bad_length(tmp_path):
    write_cifar(tmp_path)
    with (tmp_path / "data_batch_3.bin").open("ab") as batch:
        batch.write(b"\x00")

    with pytest.raises(ConfigError, match=r"data_batch_3.bin is 9220 bytes, not a positive multiple of 3073"):
        read_cifar10(tmp_path)


def test_cifar10_label_out_of_range(tmp_path):
    write_cifar(tmp_path)
    record = bytes([10]) + bytes(3072)
    (tmp_path / "data_batch_2.bin").write_bytes(bytes([0]) + bytes(3072) + record)

    with pytest.raises(ConfigError, match=r"data_batch_2.bin record 1 has label 10, but labels are 0..9"):
        read_cifar10(tmp_path)


def test_cifar10_missing_files_say_where_and_mention_download(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin/test_batch.bin").unlink()

    with pytest.raises(ConfigError, match=r"test_batch.bin not found in .*cifar-10-batches-bin.*data.download: true"):
        read_cifar10(tmp_path)
    with pytest.raises(ConfigError, match=r"is not an existing folder.*data.download: true"):
        source_files("cifar10", tmp_path / "absent")


# --- MNIST / Fashion-MNIST idx ---------------------------------------------------------------------------------


def idx_bytes(array, magic):
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder, gz=False, n_train=5, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        IDX_FILES[0]: (noise((n_train, 28, 28)), 2051),
        IDX_FILES[1]: (RNG.integers(0, 10, n_train), 2049),
        IDX_FILES[2]: (noise((n_test, 28, 28)), 2051),
        IDX_FILES[3]: (RNG.integers(0, 10, n_test), 2049),
    }
    paths = []
    for stem, (array, magic) in arrays.items():
        data = idx_bytes(array, magic)
        path = folder / (stem + ".gz" if gz else stem)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return [array for array, _ in arrays.values()], paths


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reads_back_exactly(tmp_path, gz):
    (train_images, train_labels, test_images, test_labels), paths = write_mnist(tmp_path, gz=gz)

    raw = read_mnist(tmp_path)

    assert raw.train_images.shape == (5, 1, 28, 28) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images[:, 0], train_images)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    np.testing.assert_array_equal(raw.test_images[:, 0], test_images)
    np.testing.assert_array_equal(raw.test_labels, test_labels)
    assert raw.train_labels.dtype == np.int64
    assert raw.class_names == [str(digit) for digit in range(10)]
    assert source_files("mnist", tmp_path) == sorted(paths)


def test_fashion_mnist_in_torchvision_layout_has_official_class_names(tmp_path):
    (train_images, *_), paths = write_mnist(tmp_path / "FashionMNIST/raw", gz=True)

    raw = read_mnist(tmp_path, fashion=True)

    assert raw.class_names == FASHION_CLASSES
    assert raw.class_names[0] == "T-shirt/top" and raw.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(raw.train_images[:, 0], train_images)
    assert source_files("fashion_mnist", tmp_path) == sorted(paths)


def test_mnist_bad_magic(tmp_path):
    write_mnist(tmp_path)
    labels_as_images = idx_bytes(np.zeros(5), 2049)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels_as_images)

    with pytest.raises(
        ConfigError, match=r"train-images-idx3-ubyte is not an idx file .*magic number 2049, expected 2051"
    ):
        read_mnist(tmp_path)


def test_mnist_truncated_file_and_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte is 2367 bytes but its header promises 2368"):
        read_mnist(tmp_path)

    path.write_bytes(idx_bytes(noise((4, 28, 28)), 2051))
    with pytest.raises(ConfigError, match=r"has 4 images but .*t10k-labels-idx1-ubyte has 3 labels"):
        read_mnist(tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2, 3, 10, 4]), 2049))

    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte record 3 has label 10"):
        read_mnist(tmp_path)


def test_mnist_missing_files_mention_download(tmp_path):
    _, paths = write_mnist(tmp_path, gz=True)
    paths[3].unlink()

    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in .*data.download: true"):
        read_mnist(tmp_path)
