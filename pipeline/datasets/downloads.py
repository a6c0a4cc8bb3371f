"""Fetching the public datasets (CIFAR-10 binary, MNIST, Fashion-MNIST) with their published checksums.

Each file goes to a temp file beside its destination, is checked against its published md5 and then renamed into
place, so an interrupted or corrupted download never looks like data. Offline, the error says which file to put
where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pipeline.datasets.binary import CIFAR_FILES, CIFAR_FOLDER, CIFAR_URL, find_cifar_folder, find_idx_files
from pipeline.errors import ConfigError


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
            CIFAR_URL,
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


def download(name: str, root: Path) -> None:
    """Fetch `name` (cifar10, mnist, fashion_mnist) into `root`, unless it is already there.

    Each file goes to a temp file beside its destination, is checked against its published md5 and then
    renamed into place, so an interrupted or corrupted download never looks like data.
    """
    if name not in DOWNLOADS:
        raise ConfigError(f"data.download cannot fetch {name!r}; downloadable: {', '.join(DOWNLOADS)}")
    root = Path(root)
    if name == "cifar10":
        if root.is_dir() and find_cifar_folder(root) is not None:
            return
        archive = _fetch(DOWNLOADS[name][0], root, name)
        _extract_cifar(archive, root)
        return
    if root.is_dir() and find_idx_files(root, fashion=name == "fashion_mnist") is not None:
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
