"""Image folders: `train/<class>/*.png|jpg` (optionally `test/<class>/...`) decoded once into uint8 `.npy` files.

Images are decoded in chunks by worker processes and written straight into a preallocated file per split in the
data stage's folder, so no more than a few chunks of decoded pixels are ever in memory: a folder larger than RAM
reads like a small one. With `data.image_size` every image is resized and center-cropped the way torchvision's
reference recipe prepares evaluation images (`resize_center_crop`); the stored images are then exactly what
evaluation sees, and training augments them (pipeline/training/augment.py).
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.artifact import create_images, open_images, write_rows
from pipeline.datasets.sources import RawDataset, require_root
from pipeline.errors import ConfigError, require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODE_CHUNK = 1000  # most files per worker task: big enough that process overhead is small next to decoding
CHUNK_BYTES = 32 << 20  # and at most this many decoded bytes (213 images at 224 px), a few of them in flight
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")  # decoded to one channel

_Split = tuple[list[Path], np.ndarray]  # image files and their labels


def source_files(root: Path) -> list[Path]:
    """Every image file of the folder, sorted."""
    _, train, test = _list_imagefolder(root)
    return sorted(train[0] + (test[0] if test else []))


def read_imagefolder(
    root: Path, image_size: int | None, out_dir: Path, crop_fraction: float = 0.875, workers: int = 2
) -> RawDataset:
    """`root/train/<class>/*` (and optionally `root/test/<class>/*`) decoded with Pillow into memory-mapped
    (N, C, H, W) uint8 files `out_dir/source-train.npy` (and `source-test.npy`).

    C is 1 when every image is grayscale, else 3. Without `image_size` all images must share one size; with it
    every image becomes image_size x image_size by `resize_center_crop`.
    """
    require(image_size is None or image_size >= 1, "data.image_size", image_size, "a positive integer or null")
    class_names, train, test = _list_imagefolder(Path(root))
    shape = _scan(train[0] + (test[0] if test else []), image_size)
    decode = functools.partial(_decode_chunk, channels=shape[0], image_size=image_size, crop_fraction=crop_fraction)
    images = {}
    for split, files in (("train", train[0]), ("test", test[0] if test else None)):
        if files is not None:
            images[split] = _decode_into(files, Path(out_dir) / f"source-{split}.npy", shape, decode, workers)
    return RawDataset(
        train_images=images["train"],
        train_labels=train[1],
        test_images=images.get("test"),
        test_labels=test[1] if test else None,
        class_names=class_names,
    )


def resize_center_crop(image: Image.Image, size: int, crop_fraction: float) -> Image.Image:
    """The shorter side resized (bilinear) to floor(size / crop_fraction), then the central size x size square.

    torchvision's reference evaluation transform: Resize(256) then CenterCrop(224) is size 224 at crop_fraction
    0.875; 1.0 keeps the whole shorter side. Integer arithmetic as torchvision's Resize and CenterCrop do it, so
    the same file gives the same pixels here and in the release's predict.py (which repeats this function).
    """
    width, height = image.size
    short = math.floor(size / crop_fraction)
    if width <= height:
        resized = (short, int(short * height / width))
    else:
        resized = (int(short * width / height), short)
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR)
    left = int(round((resized[0] - size) / 2.0))
    top = int(round((resized[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


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


def _scan(files: list[Path], image_size: int | None) -> tuple[int, int, int]:
    """(channels, height, width) of the stored images, from the files' headers alone (no pixels decoded)."""
    gray, sizes = True, {}
    for path in files:
        try:
            with Image.open(path) as image:
                gray &= image.mode in GRAY_MODES
                sizes.setdefault(image.size, path)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise _unreadable(str(path), error) from None
        if image_size is None and len(sizes) > 1:
            ((width, height), first), ((w, h), odd) = sizes.items()
            for named in (first, odd):  # a truncated file's header may be fine: report it as corrupt, not as odd
                _decode(str(named), None, 1.0)
            raise ConfigError(
                f"imagefolder: {first} is {width}x{height} pixels but {odd} is {w}x{h}; "
                "set data.image_size to resize every image to one size"
            )
    width, height = (image_size, image_size) if image_size is not None else next(iter(sizes))
    return 1 if gray else 3, height, width


def _decode_into(
    files: list[Path], path: Path, shape: tuple[int, int, int], decode: Callable, workers: int
) -> np.ndarray:
    """Decode `files` chunk by chunk into the preallocated file `path`; the file, memory-mapped."""
    create_images(path, (len(files), *shape))
    per_chunk = max(1, min(DECODE_CHUNK, CHUNK_BYTES // math.prod(shape)))
    chunks = [[str(f) for f in files[i : i + per_chunk]] for i in range(0, len(files), per_chunk)]
    start = 0
    for pixels in _decoded(chunks, decode, workers):
        write_rows(path, start, pixels)
        start += len(pixels)
    return open_images(path)


def _decoded(chunks: list[list[str]], decode: Callable, workers: int) -> Iterator[np.ndarray]:
    """Each chunk's decoded pixels, in order; at most `workers + 1` chunks decoded ahead of the one consumed."""
    if workers <= 1 or len(chunks) <= 1:  # one chunk: starting processes would cost more than it saves
        yield from map(decode, chunks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(decode, chunk))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # one bad file fails the read: don't decode the rest
            raise


def _decode_chunk(paths: list[str], channels: int, image_size: int | None, crop_fraction: float) -> np.ndarray:
    """Module level so worker processes can run it: (len(paths), channels, H, W) uint8; a grayscale image in a
    color set is repeated into the three channels."""
    decoded = [_decode(path, image_size, crop_fraction) for path in paths]
    out = np.empty((len(decoded), channels, *decoded[0].shape[:2]), dtype=np.uint8)
    for i, array in enumerate(decoded):
        out[i] = array if array.ndim == 2 else array.transpose(2, 0, 1)
    return out


def _decode(path: str, image_size: int | None, crop_fraction: float) -> np.ndarray:
    """(H, W) grayscale or (H, W, 3) RGB uint8."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here with its name
            image = _normalize_mode(image)
            if image_size is not None:
                image = resize_center_crop(image, image_size, crop_fraction)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: str, error: BaseException) -> ConfigError:
    reason = str(error).replace("\n", " ") or type(error).__name__
    return ConfigError(f"imagefolder: cannot decode image {path} ({reason}); replace or delete the file")


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
