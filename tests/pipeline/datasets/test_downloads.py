"""Downloads (urlopen is faked: no test touches the network): checksums, offline errors, safe extraction."""

import hashlib
import io
import re
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from pipeline.datasets import downloads
from pipeline.datasets.binary import CIFAR_FILES, IDX_FILES, read_cifar10, read_mnist
from pipeline.datasets.catalog import source_files
from pipeline.datasets.downloads import Resource, download
from pipeline.errors import ConfigError
from tests.pipeline.datasets.test_binary import write_cifar, write_mnist

RNG = np.random.default_rng(0)

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
    assert server.requested == [downloads.DOWNLOADS[name][0].url]
    assert files_under(tmp_path) == []  # neither the bad file nor a temp file is left


def test_download_offline_names_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer(offline=True))
    resource = downloads.DOWNLOADS["fashion_mnist"][0]

    with pytest.raises(ConfigError) as error:
        download("fashion_mnist", tmp_path)
    message = str(error.value)
    assert resource.url in message and "name resolution" in message
    assert f"download it by hand and save it as {tmp_path / 'FashionMNIST/raw/train-images-idx3-ubyte.gz'}" in message
    assert files_under(tmp_path) == []


def test_download_urls_and_checksums_are_the_published_ones():
    cifar = downloads.DOWNLOADS["cifar10"][0]
    assert cifar.url == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar.md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    mnist = {r.url.rsplit("/", 1)[1]: r.md5 for r in downloads.DOWNLOADS["mnist"]}
    assert mnist["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert all(r.url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for r in downloads.DOWNLOADS["mnist"])
    fashion = {r.url.rsplit("/", 1)[1]: r.md5 for r in downloads.DOWNLOADS["fashion_mnist"]}
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
    monkeypatch.setitem(downloads.DOWNLOADS, "cifar10", (resource,))
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
    served = {r.url: p.read_bytes() for r, p in zip(downloads.DOWNLOADS["mnist"], paths, strict=True)}
    tiny = tuple(Resource(r.url, hashlib.md5(served[r.url]).hexdigest(), r.path) for r in downloads.DOWNLOADS["mnist"])
    monkeypatch.setitem(downloads.DOWNLOADS, "mnist", tiny)
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
