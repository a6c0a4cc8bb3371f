"""The datasets edgeforge reads, by name: where their files are, how they are read, and their fingerprint.

`digits` is scikit-learn's embedded set (no download); the others are read from `data.root` by the readers of
this package. The fingerprint is a content hash of every source file, part of the data stage's cache key.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import sha256_file
from pipeline.datasets import binary, downloads, imagefolder
from pipeline.datasets.sources import ON_DISK, RawDataset
from pipeline.errors import ConfigError

DATASETS = ("digits", *ON_DISK)
DOWNLOADABLE = tuple(downloads.DOWNLOADS)
DIGITS_FILE = "digits.csv.gz"  # in scikit-learn's datasets/data folder
HASH_STATE = "file-hashes.json"  # (size, mtime) -> sha256 of every source file hashed before


def digits_file() -> Path:
    """scikit-learn's embedded digits file, found without importing scikit-learn (which takes a second)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / DIGITS_FILE if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"data.name='digits' reads scikit-learn's {DIGITS_FILE}, which is not installed; "
            "pip install scikit-learn, or choose another data.name"
        )
    return path


def load_digits() -> RawDataset:
    """The 1,797 8x8 digits as scikit-learn's load_digits reads them (pixels 0..16, scaled here to 0..255)."""
    with gzip.open(digits_file(), "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    pixels = np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return RawDataset(pixels, table[:, -1].astype(np.int64), None, None, [str(c) for c in range(10)])


def read(name: str, root: Path | None, image_size: int | None, crop_fraction: float, out_dir: Path) -> RawDataset:
    """The source dataset `name` as uint8 arrays; an image folder is decoded (one process per core) into
    memory-mapped files in `out_dir` (source-*.npy), since it may be larger than RAM."""
    if name == "digits":
        return load_digits()
    if name == "imagefolder":
        workers = min(os.cpu_count() or 1, 8)
        return imagefolder.read_imagefolder(root, image_size, out_dir, crop_fraction, workers)
    if name == "cifar10":
        return binary.read_cifar10(root)
    return binary.read_mnist(root, fashion=name == "fashion_mnist")


def source_files(name: str, root: Path) -> list[Path]:
    """Every file the dataset `name` is read from, sorted: hashed to fingerprint the source."""
    root = Path(root)
    if name == "imagefolder":
        return imagefolder.source_files(root)
    if name == "cifar10":
        return binary.cifar10_files(root)
    if name in ("mnist", "fashion_mnist"):
        return binary.mnist_files(root, fashion=name == "fashion_mnist")
    raise ConfigError(f"data.name={name!r} has no on-disk reader; available: {', '.join(ON_DISK)}")


def fingerprint(name: str, root: Path | None, download: bool, state_dir: Path) -> dict[str, Any]:
    """Content hash of the source data (fetching it first when `download`).

    File hashes are remembered by (size, mtime) in `state_dir`, as dvc does, so a re-run with untouched files
    reads none of them.
    """
    if name == "digits":
        raw = load_digits()
        digest = hashlib.sha256(raw.train_images.tobytes() + raw.train_labels.tobytes())
        return {
            "source": "sklearn digits",
            "source_sha256": digest.hexdigest(),
            "scikit-learn": version("scikit-learn"),
        }
    root = Path(root)
    if download:
        downloads.download(name, root)
    files = source_files(name, root)
    known = _read_hash_state(state_dir)
    digest = hashlib.sha256()
    rehashed = False
    for path in files:
        stat = path.stat()
        entry = known.get(str(path))
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = known[str(path)] = [stat.st_size, stat.st_mtime_ns, sha256_file(path)]
            rehashed = True
        digest.update(f"{path.relative_to(root).as_posix()}\0{entry[2]}\n".encode())
    if rehashed:  # 60,000 CIFAR entries are ~9 MB of JSON: rewrite them only when something changed
        _write_hash_state(state_dir, known)
    fingerprint = {"source": str(root), "files": len(files), "source_sha256": digest.hexdigest()}
    # Pillow decodes image folders: another version may decode a JPEG to other pixels.
    return fingerprint | ({"pillow": version("pillow")} if name == "imagefolder" else {})


def _read_hash_state(state_dir: Path) -> dict[str, list]:
    try:
        state = json.loads((state_dir / HASH_STATE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}  # a lost or damaged hash cache only costs re-hashing


def _write_hash_state(state_dir: Path, known: dict[str, list]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temp = state_dir / f"{HASH_STATE}.{os.getpid()}"
    temp.write_text(json.dumps(known))
    os.replace(temp, state_dir / HASH_STATE)
