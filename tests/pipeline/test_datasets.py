"""On-disk dataset readers: tiny files written here, read back exactly; every user-data problem is a ConfigError."""

import gzip
import hashlib
import io
import re
import struct
import tarfile
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline import datasets
from pipeline.datasets import (
    CIFAR_FILES,
    FASHION_CLASSES,
    IDX_FILES,
    RawDataset,
    Resource,
    download,
    read_cifar10,
    read_imagefolder,
    read_mnist,
    source_files,
)
from pipeline.errors import ConfigError

RNG = np.random.default_rng(0)


# --- image folders ---------------------------------------------------------------------------------------------


def save(path, pixels, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def solid(color, size=(8, 8)):
    return np.full((*size, 3), color, dtype=np.uint8)


def noise(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def test_imagefolder_rgb_png_and_jpeg_with_test_split(tmp_path):
    a = noise((8, 8, 3))
    e = noise((8, 8, 3))
    files = [
        save(tmp_path / "train/cat/a.png", a),
        save(tmp_path / "train/cat/b.jpg", solid((200, 100, 50)), quality=95),
        save(tmp_path / "train/dog/c.PNG", solid((10, 20, 30))),
        save(tmp_path / "test/cat/d.jpeg", solid((0, 128, 255)), quality=95),
        save(tmp_path / "test/dog/e.png", e),
    ]
    (tmp_path / "train/dog/notes.txt").write_text("not an image")
    (tmp_path / "train/dog/.hidden.png").write_bytes(b"macOS metadata, not a picture")

    raw = read_imagefolder(tmp_path, image_size=None, workers=1)

    assert isinstance(raw, RawDataset)
    assert raw.class_names == ["cat", "dog"]
    assert raw.train_images.shape == (3, 3, 8, 8) and raw.train_images.dtype == np.uint8
    assert raw.train_labels.tolist() == [0, 0, 1] and raw.train_labels.dtype == np.int64
    assert raw.test_images.shape == (2, 3, 8, 8)
    assert raw.test_labels.tolist() == [0, 1] and raw.test_labels.dtype == np.int64
    np.testing.assert_array_equal(raw.train_images[0], a.transpose(2, 0, 1))  # PNG is lossless: exact, channel-first
    np.testing.assert_array_equal(raw.train_images[2], solid((10, 20, 30)).transpose(2, 0, 1))
    np.testing.assert_array_equal(raw.test_images[1], e.transpose(2, 0, 1))
    jpeg = raw.train_images[1].astype(int)  # JPEG is lossy: a solid colour comes back within a few levels
    assert np.abs(jpeg - np.array([200, 100, 50])[:, None, None]).max() <= 3
    assert source_files("imagefolder", tmp_path) == sorted(files)


def test_imagefolder_grayscale_modes_give_one_channel(tmp_path):
    gray = noise((6, 6))
    save(tmp_path / "train/a/gray.png", gray)
    Image.fromarray(np.eye(6, dtype=bool)).save(tmp_path / "train/a/bits.png")  # mode "1"
    sixteen = np.array([[0, 257 * 100, 65535] * 2] * 6, dtype=np.uint16)
    save(tmp_path / "train/b/deep.png", sixteen)  # mode "I;16"

    raw = read_imagefolder(tmp_path, image_size=None, workers=1)

    assert raw.train_images.shape == (3, 1, 6, 6)
    np.testing.assert_array_equal(raw.train_images[1, 0], gray)  # sorted by name: bits.png, gray.png
    np.testing.assert_array_equal(raw.train_images[0, 0], np.eye(6, dtype=np.uint8) * 255)
    assert raw.train_images[2, 0, 0, :3].tolist() == [0, 100, 255]  # 16-bit scaled, not clipped at 255


def test_imagefolder_mixed_gray_and_color_gives_three_channels(tmp_path):
    gray = noise((5, 5))
    save(tmp_path / "train/a/gray.png", gray)
    save(tmp_path / "train/b/color.png", noise((5, 5, 3)))

    raw = read_imagefolder(tmp_path, image_size=None, workers=1)

    assert raw.train_images.shape == (2, 3, 5, 5)
    for channel in range(3):  # the grayscale image is repeated into every channel
        np.testing.assert_array_equal(raw.train_images[0, channel], gray)


def test_imagefolder_without_test_folder_has_no_test_split(tmp_path):
    save(tmp_path / "train/a/x.png", noise((4, 4, 3)))
    save(tmp_path / "train/b/y.png", noise((4, 4, 3)))

    raw = read_imagefolder(tmp_path, image_size=None, workers=1)

    assert raw.test_images is None and raw.test_labels is None
    assert raw.train_labels.tolist() == [0, 1]


def test_imagefolder_mixed_sizes_need_image_size_and_are_resized_with_it(tmp_path):
    small = save(tmp_path / "train/a/small.png", solid((40, 80, 120), size=(8, 8)))
    large = save(tmp_path / "train/b/large.png", solid((1, 2, 3), size=(12, 20)))

    with pytest.raises(ConfigError, match="set data.image_size") as error:
        read_imagefolder(tmp_path, image_size=None, workers=1)
    assert str(small) in str(error.value) and str(large) in str(error.value)
    assert "20x12" in str(error.value)  # width x height of the odd one out

    raw = read_imagefolder(tmp_path, image_size=16, workers=1)
    assert raw.train_images.shape == (2, 3, 16, 16)
    assert (raw.train_images[0] == np.array([40, 80, 120])[:, None, None]).all()  # solid stays solid
    assert (raw.train_images[1] == np.array([1, 2, 3])[:, None, None]).all()


def test_imagefolder_rejects_image_size_zero(tmp_path):
    with pytest.raises(ConfigError, match=r"data.image_size=0 is not allowed"):
        read_imagefolder(tmp_path, image_size=0)


@pytest.mark.parametrize("content", [b"this is not a PNG", "truncated"])
def test_imagefolder_corrupt_image_is_named(tmp_path, content):
    save(tmp_path / "train/a/good.png", noise((8, 8, 3)))
    bad = tmp_path / "train/b/bad.png"
    if content == "truncated":
        save(bad, noise((64, 64, 3)))
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.parent.mkdir(parents=True)
        bad.write_bytes(content)

    with pytest.raises(ConfigError, match=f"cannot decode image {re.escape(str(bad))} .*replace or delete"):
        read_imagefolder(tmp_path, image_size=None, workers=1)


def test_imagefolder_decodes_in_worker_processes_with_the_same_result(tmp_path, monkeypatch):
    for i in range(5):
        save(tmp_path / f"train/{'ab'[i % 2]}/{i}.png", noise((7, 7, 3)))
    in_process = read_imagefolder(tmp_path, image_size=None, workers=1)
    monkeypatch.setattr(datasets, "DECODE_CHUNK", 2)  # three chunks, so the pool really runs
    pools = []

    class RecordingPool(ProcessPoolExecutor):
        def __init__(self, max_workers):
            pools.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(datasets, "ProcessPoolExecutor", RecordingPool)

    pooled = read_imagefolder(tmp_path, image_size=None, workers=2)

    assert pools == [2]
    np.testing.assert_array_equal(pooled.train_images, in_process.train_images)
    np.testing.assert_array_equal(pooled.train_labels, in_process.train_labels)
    bad = tmp_path / "train/b/9.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):  # the error crosses the process boundary intact
        read_imagefolder(tmp_path, image_size=None, workers=2)


def test_imagefolder_empty_class_folder(tmp_path):
    save(tmp_path / "train/a/x.png", noise((4, 4, 3)))
    (tmp_path / "train/b").mkdir()
    (tmp_path / "train/b/readme.txt").write_text("no images here")

    with pytest.raises(ConfigError, match=r"class folder .*train/b has no \.jpg/\.jpeg/\.png images"):
        read_imagefolder(tmp_path, image_size=None)


def test_imagefolder_single_class(tmp_path):
    save(tmp_path / "train/only/x.png", noise((4, 4, 3)))
    (tmp_path / "train/.ipynb_checkpoints").mkdir()  # hidden folders are not classes

    with pytest.raises(ConfigError, match=r"has only one class folder \(only\); a classifier needs"):
        read_imagefolder(tmp_path, image_size=None)


def test_imagefolder_missing_root_and_missing_train(tmp_path):
    with pytest.raises(ConfigError, match=r"imagefolder: data.root .*nowhere is not an existing folder"):
        read_imagefolder(tmp_path / "nowhere", image_size=None)
    with pytest.raises(ConfigError, match=r"train does not exist; put the training images in train/<class>/"):
        source_files("imagefolder", tmp_path)


def test_imagefolder_test_classes_must_match_train(tmp_path):
    for split, name in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "c")]:
        save(tmp_path / split / name / "x.png", noise((4, 4, 3)))

    with pytest.raises(ConfigError, match=r"same class folders .*missing: \['b'\], extra: \['c'\]"):
        read_imagefolder(tmp_path, image_size=None)


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


# --- downloads (urlopen is faked: no test touches the network) ------------------------------------------------


class FakeServer:
    """Stands in for urllib.request.urlopen: serves bytes by URL, or raises URLError for everything."""

    def __init__(self, files=None, offline=False):
        self.files = files or {}
        self.offline = offline
        self.requested = []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        if self.offline:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return io.BytesIO(self.files.get(url, b"<html>not the file</html>"))


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_checksum_mismatch_deletes_the_file(tmp_path, monkeypatch, name):
    server = FakeServer()
    monkeypatch.setattr(urllib.request, "urlopen", server)

    with pytest.raises(
        ConfigError, match=r"arrived with md5 [0-9a-f]{32}, expected [0-9a-f]{32}; the download was del"
    ):
        download(name, tmp_path)
    assert server.requested == [datasets.DOWNLOADS[name][0].url]
    assert files_under(tmp_path) == []  # neither the bad file nor a temp file is left


def test_download_offline_names_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(offline=True))
    resource = datasets.DOWNLOADS["fashion_mnist"][0]

    with pytest.raises(ConfigError) as error:
        download("fashion_mnist", tmp_path)
    message = str(error.value)
    assert resource.url in message and "name resolution" in message
    assert f"download it by hand and save it as {tmp_path / 'FashionMNIST/raw/train-images-idx3-ubyte.gz'}" in message
    assert files_under(tmp_path) == []


def test_download_urls_and_checksums_are_the_published_ones():
    cifar = datasets.DOWNLOADS["cifar10"][0]
    assert cifar.url == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar.md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    mnist = {r.url.rsplit("/", 1)[1]: r.md5 for r in datasets.DOWNLOADS["mnist"]}
    assert mnist["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert all(r.url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for r in datasets.DOWNLOADS["mnist"])
    fashion = {r.url.rsplit("/", 1)[1]: r.md5 for r in datasets.DOWNLOADS["fashion_mnist"]}
    assert fashion["t10k-labels-idx1-ubyte.gz"] == "bb300cfdad3c16e7a12a480ee83cd310"
    assert {len(v) for v in (mnist, fashion)} == {4}


def tar_gz(members):
    """A .tar.gz in memory from {name: bytes}; a value of None makes a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve_cifar(monkeypatch, archive):
    """Point the cifar10 download at `archive` (md5 included) and return the fake server."""
    url = "https://example.invalid/cifar-10-binary.tar.gz"
    resource = Resource(url, hashlib.md5(archive).hexdigest(), "cifar-10-binary.tar.gz")
    monkeypatch.setitem(datasets.DOWNLOADS, "cifar10", (resource,))
    server = FakeServer({url: archive})
    monkeypatch.setattr(urllib.request, "urlopen", server)
    return server


def test_download_cifar10_extracts_the_archive_once(tmp_path, monkeypatch):
    source = tmp_path / "source"
    train_images, train_labels, _, _ = write_cifar(source)
    members = {f"cifar-10-batches-bin/{name}": (source / name).read_bytes() for name in CIFAR_FILES}
    members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    server = serve_cifar(monkeypatch, tar_gz(members))
    root = tmp_path / "data"

    download("cifar10", root)
    download("cifar10", root)  # already there: no second request

    assert len(server.requested) == 1
    raw = read_cifar10(root)
    np.testing.assert_array_equal(raw.train_images, train_images)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    assert "cifar-10-batches-bin/readme.html" not in files_under(root)  # only the dataset's files are kept


@pytest.mark.parametrize("member", ["../evil.bin", "/tmp/evil.bin", "cifar-10-batches-bin/link"])
def test_download_cifar10_rejects_unsafe_archive_members(tmp_path, monkeypatch, member):
    serve_cifar(monkeypatch, tar_gz({member: None if member.endswith("link") else b"x"}))
    root = tmp_path / "data"

    with pytest.raises(ConfigError, match=f"holds '{re.escape(member)}', which is not a plain file inside the archive"):
        download("cifar10", root)
    assert files_under(root) == ["cifar-10-binary.tar.gz"]
    assert not (tmp_path / "evil.bin").exists()


def test_download_mnist_lands_in_torchvision_layout(tmp_path, monkeypatch):
    arrays, paths = write_mnist(tmp_path / "source", gz=True)
    # The real md5s belong to the real files: serve the tiny ones under the real URLs with their own md5s.
    served = {r.url: p.read_bytes() for r, p in zip(datasets.DOWNLOADS["mnist"], paths, strict=True)}
    tiny = tuple(Resource(r.url, hashlib.md5(served[r.url]).hexdigest(), r.path) for r in datasets.DOWNLOADS["mnist"])
    monkeypatch.setitem(datasets.DOWNLOADS, "mnist", tiny)
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(served))
    root = tmp_path / "data"

    download("mnist", root)

    assert files_under(root) == sorted(f"MNIST/raw/{stem}.gz" for stem in IDX_FILES)
    np.testing.assert_array_equal(read_mnist(root).train_images[:, 0], arrays[0])


def test_unknown_names_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.name='svhn' has no on-disk reader; available: imagefolder, cifar10"):
        source_files("svhn", tmp_path)
    with pytest.raises(ConfigError, match=r"data.download cannot fetch 'imagefolder'; downloadable: cifar10, mnist"):
        download("imagefolder", tmp_path)
