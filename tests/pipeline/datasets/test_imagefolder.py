"""Image folders: tiny files written here, read back exactly; every user-data problem is a ConfigError."""

import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import imagefolder
from pipeline.datasets.catalog import source_files
from pipeline.datasets.imagefolder import read_imagefolder
from pipeline.datasets.sources import RawDataset
from pipeline.errors import ConfigError

RNG = np.random.default_rng(0)


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

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)

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

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)

    assert raw.train_images.shape == (3, 1, 6, 6)
    np.testing.assert_array_equal(raw.train_images[1, 0], gray)  # sorted by name: bits.png, gray.png
    np.testing.assert_array_equal(raw.train_images[0, 0], np.eye(6, dtype=np.uint8) * 255)
    assert raw.train_images[2, 0, 0, :3].tolist() == [0, 100, 255]  # 16-bit scaled, not clipped at 255


def test_imagefolder_mixed_gray_and_color_gives_three_channels(tmp_path):
    gray = noise((5, 5))
    save(tmp_path / "train/a/gray.png", gray)
    save(tmp_path / "train/b/color.png", noise((5, 5, 3)))

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)

    assert raw.train_images.shape == (2, 3, 5, 5)
    for channel in range(3):  # the grayscale image is repeated into every channel
        np.testing.assert_array_equal(raw.train_images[0, channel], gray)


def test_imagefolder_without_test_folder_has_no_test_split(tmp_path):
    save(tmp_path / "train/a/x.png", noise((4, 4, 3)))
    save(tmp_path / "train/b/y.png", noise((4, 4, 3)))

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)

    assert raw.test_images is None and raw.test_labels is None
    assert raw.train_labels.tolist() == [0, 1]


def test_imagefolder_mixed_sizes_need_image_size_and_are_resized_with_it(tmp_path):
    small = save(tmp_path / "train/a/small.png", solid((40, 80, 120), size=(8, 8)))
    large = save(tmp_path / "train/b/large.png", solid((1, 2, 3), size=(12, 20)))

    with pytest.raises(ConfigError, match="set data.image_size") as error:
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)
    assert str(small) in str(error.value) and str(large) in str(error.value)
    assert "20x12" in str(error.value)  # width x height of the odd one out

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=16, workers=1)
    assert raw.train_images.shape == (2, 3, 16, 16)
    assert (raw.train_images[0] == np.array([40, 80, 120])[:, None, None]).all()  # solid stays solid
    assert (raw.train_images[1] == np.array([1, 2, 3])[:, None, None]).all()


def test_imagefolder_rejects_image_size_zero(tmp_path):
    with pytest.raises(ConfigError, match=r"data.image_size=0 is not allowed"):
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=0)


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
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)


def test_imagefolder_decodes_in_worker_processes_with_the_same_result(tmp_path, monkeypatch):
    for i in range(5):
        save(tmp_path / f"train/{'ab'[i % 2]}/{i}.png", noise((7, 7, 3)))
    in_process = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1)
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK", 2)  # three chunks, so the pool really runs
    pools = []

    class RecordingPool(ProcessPoolExecutor):
        def __init__(self, max_workers):
            pools.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(imagefolder, "ProcessPoolExecutor", RecordingPool)

    pooled = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=2)

    assert pools == [2]
    np.testing.assert_array_equal(pooled.train_images, in_process.train_images)
    np.testing.assert_array_equal(pooled.train_labels, in_process.train_labels)
    bad = tmp_path / "train/b/9.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):  # the error crosses the process boundary intact
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=2)


def test_imagefolder_empty_class_folder(tmp_path):
    save(tmp_path / "train/a/x.png", noise((4, 4, 3)))
    (tmp_path / "train/b").mkdir()
    (tmp_path / "train/b/readme.txt").write_text("no images here")

    with pytest.raises(ConfigError, match=r"class folder .*train/b has no \.jpg/\.jpeg/\.png images"):
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None)


def test_imagefolder_single_class(tmp_path):
    save(tmp_path / "train/only/x.png", noise((4, 4, 3)))
    (tmp_path / "train/.ipynb_checkpoints").mkdir()  # hidden folders are not classes

    with pytest.raises(ConfigError, match=r"has only one class folder \(only\); a classifier needs"):
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None)


def test_imagefolder_missing_root_and_missing_train(tmp_path):
    with pytest.raises(ConfigError, match=r"imagefolder: data.root .*nowhere is not an existing folder"):
        read_imagefolder(tmp_path / "nowhere", out_dir=tmp_path, image_size=None)
    with pytest.raises(ConfigError, match=r"train does not exist; put the training images in train/<class>/"):
        source_files("imagefolder", tmp_path)


def test_imagefolder_test_classes_must_match_train(tmp_path):
    for split, name in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "c")]:
        save(tmp_path / split / name / "x.png", noise((4, 4, 3)))

    with pytest.raises(ConfigError, match=r"same class folders .*missing: \['b'\], extra: \['c'\]"):
        read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None)


def stripes(width, height):
    """Three vertical bands, red | green | blue, of equal width."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for band in range(3):
        pixels[:, band * width // 3 : (band + 1) * width // 3, band] = 255
    return pixels


def test_image_size_resizes_the_shorter_side_and_center_crops_mixed_sizes(tmp_path):
    save(tmp_path / "train/a/wide.png", stripes(60, 20))
    save(tmp_path / "train/a/tall.png", solid((9, 9, 9), size=(50, 10)))  # 10 wide, 50 high
    save(tmp_path / "train/b/square.png", noise((32, 32, 3)))

    raw = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=10, crop_fraction=1.0, workers=1)

    assert isinstance(raw.train_images, np.memmap) and raw.train_images.shape == (3, 3, 10, 10)
    wide = raw.train_images[1]  # sorted: tall.png, wide.png, square.png
    # 60x20 -> 30x10, then the central 10 columns: the green band (its edge columns blend with its neighbours)
    assert (wide[1, :, 1:-1] == 255).all() and (wide[[0, 2], :, 1:-1] == 0).all()
    assert (raw.train_images[0] == 9).all()
    zoomed = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=10, crop_fraction=0.5, workers=1)
    np.testing.assert_array_equal(zoomed.train_images[1], stripes(60, 20)[5:15, 25:35].transpose(2, 0, 1))


def test_resize_center_crop_is_the_same_in_the_release(tmp_path):
    from pipeline.runtime.predict import resize_center_crop as released

    for width, height, size, crop in ((300, 200, 224, 0.875), (17, 40, 16, 0.875), (50, 50, 32, 1.0), (8, 9, 8, 0.9)):
        image = Image.fromarray(noise((height, width, 3)))
        ours = imagefolder.resize_center_crop(image, size, crop)
        assert ours.size == (size, size)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(released(image, size, crop)))


def test_decoding_in_many_small_chunks_gives_the_same_file(tmp_path, monkeypatch):
    for i in range(7):
        save(tmp_path / f"train/{'ab'[i % 2]}/{i}.png", noise((6, 6) if i == 3 else (6, 6, 3)))
    whole = np.array(read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=1).train_images)
    monkeypatch.setattr(imagefolder, "CHUNK_BYTES", 2 * 3 * 6 * 6)  # two images per chunk: four chunks
    for workers in (1, 2):
        chunked = read_imagefolder(tmp_path, out_dir=tmp_path, image_size=None, workers=workers)
        np.testing.assert_array_equal(chunked.train_images, whole)
    assert (whole[5] == whole[5][:1]).all()  # b/3.png, the grayscale image, repeated into the three channels
