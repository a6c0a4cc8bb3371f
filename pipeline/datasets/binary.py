"""The official binary files: CIFAR-10's *binary* version (fixed-size records, never the pickled python
version) and MNIST / Fashion-MNIST idx files (plain or .gz)."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.datasets.sources import RawDataset, check_labels, require_root
from pipeline.errors import ConfigError

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

# Where the CIFAR-10 binary version is published (downloads.py fetches it; errors here name it).
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def cifar10_files(root: Path) -> list[Path]:
    folder = _cifar_folder(Path(root))
    return sorted(folder / f for f in CIFAR_FILES)


def mnist_files(root: Path, fashion: bool) -> list[Path]:
    return sorted(_idx_files(Path(root), fashion).values())


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


def find_cifar_folder(root: Path) -> Path | None:
    for folder in (root, root / CIFAR_FOLDER):
        if all((folder / name).is_file() for name in CIFAR_FILES):
            return folder
    return None


def _cifar_folder(root: Path) -> Path:
    folder = find_cifar_folder(require_root(root, "cifar10", fetchable=True))
    if folder is None:
        target = root / CIFAR_FOLDER
        # Name what is missing from whichever folder holds more of the set: that is where the user put them.
        missing = min(([n for n in CIFAR_FILES if not (f / n).is_file()] for f in (target, root)), key=len)
        raise ConfigError(
            f"cifar10: {', '.join(missing)} not found in {target} (nor in {root}); extract the CIFAR-10 binary "
            f"version ({CIFAR_URL}) into {root}, or set data.download: true to fetch it"
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
    check_labels(labels, path, "cifar10")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels  # the R, G, B planes are already channel-first


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
    files = find_idx_files(require_root(root, name, fetchable=True), fashion)
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


def find_idx_files(root: Path, fashion: bool) -> dict[str, Path] | None:
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
    check_labels(labels, labels_path, name)
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
