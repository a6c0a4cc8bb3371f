"""Image folders: `train/<class>/*.png|jpg` (optionally `test/<class>/...`) decoded once into uint8 arrays."""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.sources import RawDataset, require_root
from pipeline.errors import ConfigError, require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODE_CHUNK = 1000  # files per worker task: big enough that process overhead is small next to decoding

_Split = tuple[list[Path], np.ndarray]  # image files and their labels


def source_files(root: Path) -> list[Path]:
    """Every image file of the folder, sorted."""
    _, train, test = _list_imagefolder(root)
    return sorted(train[0] + (test[0] if test else []))


def read_imagefolder(root: Path, image_size: int | None, workers: int = 2) -> RawDataset:
    """`root/train/<class>/*` (and optionally `root/test/<class>/*`) decoded with Pillow into (N, C, H, W) uint8.

    C is 1 when every image is grayscale, else 3. Without `image_size` all images must share one size; with it
    every image is resized to image_size x image_size (bilinear).
    """
    require(image_size is None or image_size >= 1, "data.image_size", image_size, "a positive integer or null")
    class_names, train, test = _list_imagefolder(Path(root))
    files = train[0] + (test[0] if test else [])
    images = _stack(_decode_all(files, image_size, workers), files)
    n_train = len(train[0])
    return RawDataset(
        train_images=images[:n_train],
        train_labels=train[1],
        test_images=images[n_train:] if test else None,
        test_labels=test[1] if test else None,
        class_names=class_names,
    )


def _list_imagefolder(root: Path) -> tuple[list[str], _Split, _Split | None]:
    root = require_root(root, "imagefolder", fetchable=False)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ConfigError(f"imagefolder: {train_dir} does not exist; put the training images in train/<class>/*.png")
    class_names = _class_folders(train_dir)
    if len(class_names) < 2:
        found = f"only one class folder ({class_names[0]})" if class_names else "no class folders"
        raise ConfigError(f"imagefolder: {train_dir} has {found}; a classifier needs train/<class>/ for 2+ classes")
    train = _list_split(train_dir, class_names)
    test_dir = root / "test"
    if not test_dir.is_dir():
        return class_names, train, None
    test_classes = _class_folders(test_dir)
    if test_classes != class_names:
        missing = sorted(set(class_names) - set(test_classes))
        extra = sorted(set(test_classes) - set(class_names))
        raise ConfigError(
            f"imagefolder: {test_dir} must have the same class folders as {train_dir} (missing: {missing}, extra: "
            f"{extra}); rename or remove test folders so they match"
        )
    return class_names, train, _list_split(test_dir, class_names)


def _class_folders(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are tool debris, not classes.
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_split(split_dir: Path, class_names: list[str]) -> _Split:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        members = sorted(
            p
            for p in (split_dir / name).iterdir()
            # Hidden files are skipped too: macOS "._x.jpg" companions are not images.
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not members:
            raise ConfigError(
                f"imagefolder: class folder {split_dir / name} has no {'/'.join(IMAGE_EXTENSIONS)} images; "
                "add images or remove the folder"
            )
        files += members
        labels += [label] * len(members)
    return files, np.array(labels, dtype=np.int64)


def _decode_all(files: list[Path], image_size: int | None, workers: int) -> list[np.ndarray]:
    chunks = [[str(f) for f in files[i : i + DECODE_CHUNK]] for i in range(0, len(files), DECODE_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:  # one chunk: starting processes would cost more than it saves
        return [array for chunk in chunks for array in _decode_chunk(chunk, image_size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        try:
            decoded = list(pool.map(_decode_chunk, chunks, itertools.repeat(image_size)))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # one bad file fails the read: don't decode the rest
            raise
    return [array for chunk in decoded for array in chunk]


def _decode_chunk(paths: list[str], image_size: int | None) -> list[np.ndarray]:
    """Module level so worker processes can run it; returns (H, W) grayscale or (H, W, 3) RGB uint8 arrays."""
    return [_decode(path, image_size) for path in paths]


def _decode(path: str, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here with its name
            image = _normalize_mode(image)
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error).replace("\n", " ") or type(error).__name__
        raise ConfigError(f"imagefolder: cannot decode image {path} ({reason}); replace or delete the file") from None


def _normalize_mode(image: Image.Image) -> Image.Image:
    """Grayscale images become "L", everything else "RGB" (alpha is dropped)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow's convert("L") clips 16-bit values at 255; scale 0..65535 to 0..255 instead.
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray(((pixels + 128) // 257).astype(np.uint8))
    if image.mode in ("1", "L", "LA", "La"):
        return image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow wants palette transparency resolved before dropping it
    return image if image.mode == "RGB" else image.convert("RGB")


def _stack(arrays: list[np.ndarray], files: list[Path]) -> np.ndarray:
    """One (N, C, H, W) array; grayscale images are repeated into 3 channels if any image is color."""
    height, width = arrays[0].shape[:2]
    for array, path in zip(arrays, files, strict=True):
        if array.shape[:2] != (height, width):
            raise ConfigError(
                f"imagefolder: {files[0]} is {width}x{height} pixels but {path} is {array.shape[1]}x{array.shape[0]}; "
                "set data.image_size to resize every image to one size"
            )
    channels = 1 if all(array.ndim == 2 for array in arrays) else 3
    out = np.empty((len(arrays), channels, height, width), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = array if array.ndim == 2 else array.transpose(2, 0, 1)
    return out
