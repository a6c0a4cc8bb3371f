"""Readers that turn on-disk datasets into uint8 arrays, and the downloads that fetch the public ones.

Supported layouts: an image folder (`train/<class>/*.png|jpg`, optionally `test/<class>/...`), the CIFAR-10
*binary* version (fixed-size records, never the pickled python version) and MNIST / Fashion-MNIST idx files
(plain or .gz). Every problem with the user's data is a ConfigError: one line naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import itertools
import math
import os
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError, require

ON_DISK = ("imagefolder", "cifar10", "mnist", "fashion_mnist")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODE_CHUNK = 1000  # files per worker task: big enough that process overhead is small next to decoding

CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_META = "batches.meta.txt"
CIFAR_FILES = (*CIFAR_TRAIN, CIFAR_TEST, CIFAR_META)
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then the R, G and B planes of a 32x32 image

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclasses.dataclass(frozen=True)
class RawDataset:
    train_images: np.ndarray  # uint8, shape (N, C, H, W), C is 1 or 3
    train_labels: np.ndarray  # int64, shape (N,)
    test_images: np.ndarray | None  # None when the source has no test split
    test_labels: np.ndarray | None
    class_names: list[str]


@dataclasses.dataclass(frozen=True)
class Resource:
    url: str
    md5: str  # published checksum; a download that does not match is deleted
    path: str  # where the file goes, relative to data.root


# Verified against the publishers and torchvision:
# - CIFAR-10 binary: URL and md5 from the table on https://www.cs.toronto.edu/~kriz/cifar.html
#   ("CIFAR-10 binary version (suitable for C programs) | 162 MB | c32a1d4ab5d03f1284b67883e8d87530").
# - MNIST: the ossci-datasets mirror and md5s of pytorch/vision torchvision/datasets/mnist.py (MNIST.mirrors/resources).
# - Fashion-MNIST: URLs and md5s of the "Get the Data" table in zalandoresearch/fashion-mnist README.md, the same as
#   torchvision's FashionMNIST.resources. The bucket serves plain http only; the md5 check guards the content.
_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DOWNLOADS: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            "cifar-10-binary.tar.gz",
        ),
    ),
    # Into torchvision's folders, so MNIST and Fashion-MNIST (same file names) can share one data.root.
    "mnist": tuple(Resource(_MNIST_MIRROR + f, md5, f"MNIST/raw/{f}") for f, md5 in _MNIST_MD5.items()),
    "fashion_mnist": tuple(
        Resource(_FASHION_MIRROR + f, md5, f"FashionMNIST/raw/{f}") for f, md5 in _FASHION_MD5.items()
    ),
}

_Split = tuple[list[Path], np.ndarray]  # image files and their labels


def source_files(name: str, root: Path) -> list[Path]:
    """Every file the dataset `name` is read from, sorted: the data stage hashes them to fingerprint the source."""
    root = Path(root)
    if name == "imagefolder":
        _, train, test = _list_imagefolder(root)
        return sorted(train[0] + (test[0] if test else []))
    if name == "cifar10":
        folder = _cifar_folder(root)
        return sorted(folder / f for f in CIFAR_FILES)
    if name in ("mnist", "fashion_mnist"):
        return sorted(_idx_files(root, fashion=name == "fashion_mnist").values())
    raise ConfigError(f"data.name={name!r} has no on-disk reader; available: {', '.join(ON_DISK)}")


def _require_root(root: Path, name: str, fetchable: bool) -> Path:
    if not root.is_dir():
        fix = " (or set data.download: true to fetch it there)" if fetchable else ""
        raise ConfigError(
            f"{name}: data.root {root} is not an existing folder; set data.root to the dataset's folder{fix}"
        )
    return root


# --- image folders ---------------------------------------------------------------------------------------------


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
    root = _require_root(root, "imagefolder", fetchable=False)
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


# --- CIFAR-10 (binary version) ---------------------------------------------------------------------------------


def read_cifar10(root: Path) -> RawDataset:
    """The CIFAR-10 binary batches in `root` or `root/cifar-10-batches-bin`: 50,000 train, 10,000 test images."""
    folder = _cifar_folder(Path(root))
    train = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR_TEST)
    class_names = [
        line.strip()
        for line in (folder / CIFAR_META).read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip()
    ]
    if len(class_names) != 10:
        raise ConfigError(f"cifar10: {folder / CIFAR_META} lists {len(class_names)} class names, expected 10")
    return RawDataset(
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
    )


def _find_cifar_folder(root: Path) -> Path | None:
    for folder in (root, root / CIFAR_FOLDER):
        if all((folder / name).is_file() for name in CIFAR_FILES):
            return folder
    return None


def _cifar_folder(root: Path) -> Path:
    folder = _find_cifar_folder(_require_root(root, "cifar10", fetchable=True))
    if folder is None:
        target = root / CIFAR_FOLDER
        # Name what is missing from whichever folder holds more of the set: that is where the user put them.
        missing = min(([n for n in CIFAR_FILES if not (f / n).is_file()] for f in (target, root)), key=len)
        raise ConfigError(
            f"cifar10: {', '.join(missing)} not found in {target} (nor in {root}); extract the CIFAR-10 binary "
            f"version ({DOWNLOADS['cifar10'][0].url}) into {root}, or set data.download: true to fetch it"
        )
    return folder


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % CIFAR_RECORD:
        raise ConfigError(
            f"cifar10: {path} is {data.size} bytes, not a positive multiple of {CIFAR_RECORD} (1 label byte + 3072 "
            "pixel bytes); it is truncated or not the binary version: delete it and download it again"
        )
    records = data.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, path, "cifar10")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels  # the R, G, B planes are already channel-first


def _check_labels(labels: np.ndarray, path: Path, name: str) -> None:
    bad = np.flatnonzero(labels >= 10)
    if bad.size:
        raise ConfigError(
            f"{name}: {path} record {bad[0]} has label {labels[bad[0]]}, but labels are 0..9; "
            "the file is corrupt: delete it and download it again"
        )


# --- MNIST and Fashion-MNIST (idx files) -----------------------------------------------------------------------


def read_mnist(root: Path, fashion: bool = False) -> RawDataset:
    """MNIST (or Fashion-MNIST) idx files, plain or .gz: 60,000 train and 10,000 test images of (1, 28, 28)."""
    name = "fashion_mnist" if fashion else "mnist"
    files = _idx_files(Path(root), fashion)
    train_images, train_labels = _read_idx_pair(files[IDX_FILES[0]], files[IDX_FILES[1]], name)
    test_images, test_labels = _read_idx_pair(files[IDX_FILES[2]], files[IDX_FILES[3]], name)
    return RawDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=list(FASHION_CLASSES) if fashion else [str(digit) for digit in range(10)],
    )


def _idx_files(root: Path, fashion: bool) -> dict[str, Path]:
    name = "fashion_mnist" if fashion else "mnist"
    files = _find_idx_files(_require_root(root, name, fetchable=True), fashion)
    if files is None:
        raw = _torchvision_folder(root, fashion)
        # Name what is missing from whichever folder holds more of the set: that is where the user put them.
        missing = min(
            ([f"{stem}[.gz]" for stem in IDX_FILES if _plain_or_gz(folder / stem) is None] for folder in (raw, root)),
            key=len,
        )
        raise ConfigError(
            f"{name}: {', '.join(missing)} not found in {root} (nor in {raw}); put the four idx files (plain or "
            ".gz) there, or set data.download: true to fetch them"
        )
    return files


def _torchvision_folder(root: Path, fashion: bool) -> Path:
    return root / ("FashionMNIST" if fashion else "MNIST") / "raw"


def _find_idx_files(root: Path, fashion: bool) -> dict[str, Path] | None:
    # torchvision's folder first: in a data.root shared by both datasets, loose files in root may be the other one.
    for folder in (_torchvision_folder(root, fashion), root):
        found = {stem: _plain_or_gz(folder / stem) for stem in IDX_FILES}
        if all(found.values()):
            return {stem: path for stem, path in found.items() if path is not None}
    return None


def _plain_or_gz(stem: Path) -> Path | None:
    # The plain file wins: torchvision keeps both and the plain one is what it reads.
    gz = stem.with_name(stem.name + ".gz")
    return stem if stem.is_file() else gz if gz.is_file() else None


def _read_idx_pair(images_path: Path, labels_path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, name)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, name).astype(np.int64)
    if len(images) != len(labels):
        raise ConfigError(
            f"{name}: {images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the files do not belong together: replace them"
        )
    _check_labels(labels, labels_path, name)
    return images[:, None].copy(), labels  # copy: a writable array that owns its memory


def _read_idx(path: Path, magic: int, name: str) -> np.ndarray:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigError(f"{name}: cannot read {path} ({error}); delete it and download it again") from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    header = 4 + 4 * (magic & 0xFF)  # the low byte of the magic number is the number of dimensions
    if found != magic or len(data) < header:
        raise ConfigError(
            f"{name}: {path} is not an idx file of this kind (magic number {found}, expected {magic}); "
            "check the file name or download it again"
        )
    dims = struct.unpack(f">{magic & 0xFF}I", data[4:header])
    if len(data) != header + math.prod(dims):
        raise ConfigError(
            f"{name}: {path} is {len(data)} bytes but its header promises {header + math.prod(dims)} "
            f"(dimensions {list(dims)}); it is truncated or corrupt: delete it and download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --- downloads ------------------------------------------------------------------------------------------------


def download(name: str, root: Path) -> None:
    """Fetch `name` (cifar10, mnist, fashion_mnist) into `root`, unless it is already there.

    Each file goes to a temp file beside its destination, is checked against its published md5 and then
    renamed into place, so an interrupted or corrupted download never looks like data.
    """
    if name not in DOWNLOADS:
        raise ConfigError(f"data.download cannot fetch {name!r}; downloadable: {', '.join(DOWNLOADS)}")
    root = Path(root)
    if name == "cifar10":
        if root.is_dir() and _find_cifar_folder(root) is not None:
            return
        archive = _fetch(DOWNLOADS[name][0], root, name)
        _extract_cifar(archive, root)
        return
    if root.is_dir() and _find_idx_files(root, fashion=name == "fashion_mnist") is not None:
        return
    for resource in DOWNLOADS[name]:
        _fetch(resource, root, name)


def _fetch(resource: Resource, root: Path, name: str) -> Path:
    dest = root / resource.path
    if dest.is_file() and _md5(dest) == resource.md5:
        return dest  # fetched before (or placed by hand)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    temp = Path(temp_name)
    try:
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(resource.url, timeout=60) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            reason = getattr(error, "reason", None) or error
            raise ConfigError(
                f"{name}: cannot download {resource.url} ({reason}); without network access, download it by hand "
                f"and save it as {dest}, then run again"
            ) from None
        digest = _md5(temp)
        if digest != resource.md5:
            raise ConfigError(
                f"{name}: {resource.url} arrived with md5 {digest}, expected {resource.md5}; the download was "
                f"deleted: run again, or download it by hand and save it as {dest}"
            )
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)  # a failed or mismatched download leaves nothing behind
    return dest


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_cifar(archive: Path, root: Path) -> None:
    """Extract the batch files into root/cifar-10-batches-bin, refusing members that could escape `root`."""
    try:
        with tarfile.open(archive, "r:gz") as tar, tempfile.TemporaryDirectory(dir=root) as temp:
            members = tar.getmembers()
            _check_members(members, archive)
            tar.extractall(temp, members=members, filter="data")
            target = root / CIFAR_FOLDER
            target.mkdir(exist_ok=True)
            for file_name in CIFAR_FILES:  # file by file, so a half-extracted archive never looks complete
                os.replace(Path(temp) / CIFAR_FOLDER / file_name, target / file_name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ConfigError(f"cifar10: cannot extract {archive} ({error}); delete it and download it again") from None


def _check_members(members: Sequence[tarfile.TarInfo], archive: Path) -> None:
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
            raise ConfigError(
                f"cifar10: {archive} holds {member.name!r}, which is not a plain file inside the archive; "
                "delete the archive and download it again"
            )
