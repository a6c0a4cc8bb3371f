"""Content-addressed artifact store: `<root>/cache/<stage>/<key>/` with a manifest written last.

An entry is trusted only through its manifest: every file's sha256 is recorded there and checked
before the entry is used. A stage writes into a temp directory beside the cache; publishing writes
the manifest last and renames the directory into place, so a failed or killed stage publishes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import StageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"
LOCK_PREFIX = ".lock-"
LATEST = "latest.json"  # stage -> key of the entry the latest run used
CHECKPOINTS = "checkpoints"  # inside a temp dir: survives a failed run so the next one resumes; never published
# Libraries whose versions change what a stage produces; a new version means a new key.
KEYED_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "torch-pruning", "numpy")


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in KEYED_LIBRARIES}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stage_key(
    stage: str,
    version: int,
    params: dict[str, Any],
    upstream: dict[str, str],
    external: dict[str, Any],
    versions: dict[str, str],
) -> str:
    """sha256 over everything that determines a stage's output."""
    payload = {
        "stage": stage,
        "version": version,
        "params": params,
        "upstream": upstream,
        "external": external,
        "versions": versions,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A verified, published cache entry."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise KeyError(f"{self.stage} artifact {self.key[:12]} has no file {name!r}")
        return self.path / name

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]


class ArtifactStore:
    """The cache under `root/cache`; `root` is the artifacts directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cache = self.root / "cache"

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.cache / stage / key

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The verified entry, or None. A corrupt entry is reported, removed and treated as a miss."""
        path = self.entry_dir(stage, key)
        if not path.exists():
            return None
        problem, manifest = verify_entry(path, key)
        if problem is None:
            return Artifact(stage, key, path, manifest)
        log.warning("%s: cached entry %s is corrupt (%s); removing it and rebuilding", stage, key[:12], problem)
        self._remove(path)
        return None

    @contextlib.contextmanager
    def locked(self, stage: str, key: str, wait: bool = True) -> Iterator[None]:
        """Hold the lock of one stage key: a second process running the same key waits here
        (or, with wait=False, fails at once with a StageError)."""
        parent = self.cache / stage
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f"{LOCK_PREFIX}{key}", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StageError(
                    f"{stage}: another edgeforge process is running this stage ({key[:12]}); "
                    "wait for it, or run without --no-wait to wait and reuse its result"
                ) from None
            try:  # the OS releases the lock if this process dies
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sweep(self) -> list[Path]:
        """Remove what dead runs left behind: work directories without checkpoints whose key no live
        process holds (a live run holds its key's lock), and half-removed entries. Returns what was removed."""
        removed = []
        for path in sorted(self.cache.glob(f"*/{TEMP_PREFIX}*")):
            key = path.name.removeprefix(TEMP_PREFIX)
            if key.startswith("removed-"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                continue
            if (path / CHECKPOINTS).exists():
                continue  # a later run of this key resumes from it; `clean` removes it
            with open(path.parent / f"{LOCK_PREFIX}{key}", "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run is writing it
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def verify(self) -> tuple[int, list[str]]:
        """Re-hash every published entry: (entries checked, one line per problem)."""
        checked, problems = 0, []
        for entry in sorted(self.cache.glob("*/*")):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            checked += 1
            problem, _ = verify_entry(entry, entry.name)
            if problem:
                problems.append(f"{entry.parent.name}/{entry.name[:12]}: {problem} ({entry})")
        return checked, problems

    def temp_dir(self, stage: str, key: str) -> Path:
        """The stage key's work directory (call with the key's lock held).

        Its name is stable so that a run killed mid-stage leaves checkpoints the next run resumes
        from; anything else a dead run left there is removed.
        """
        path = self.cache / stage / f"{TEMP_PREFIX}{key}"
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.iterdir():
            if leftover.name != CHECKPOINTS:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return path

    def publish(self, stage: str, key: str, temp_dir: Path, manifest: dict[str, Any]) -> Artifact:
        """Hash every file in `temp_dir`, write the manifest last, then rename the directory into place."""
        shutil.rmtree(temp_dir / CHECKPOINTS, ignore_errors=True)
        files = {}
        for path in sorted(p for p in temp_dir.rglob("*") if p.is_file()):
            _fsync(path)
            files[path.relative_to(temp_dir).as_posix()] = sha256_file(path)
        manifest = {
            **manifest,
            "stage": stage,
            "key": key,
            "files": files,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        manifest_path = temp_dir / MANIFEST
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        manifest_path.write_text(text)
        # The manifest as a later run reads it back (sorted keys, lists for tuples): what a stage computes from its
        # inputs' manifests (the report's reproduce command) must not depend on whether they were fresh or cached.
        manifest = json.loads(text)
        _fsync(manifest_path)
        final = self.entry_dir(stage, key)
        if final.exists():  # a forced re-run replaces the old entry
            self._remove(final)
        os.rename(temp_dir, final)
        _fsync_dir(final.parent)
        return Artifact(stage, key, final, manifest)

    def discard(self, temp_dir: Path) -> None:
        """Drop a failed run's outputs, keeping its checkpoints for the next run to resume from."""
        for leftover in temp_dir.iterdir():
            if leftover.name != CHECKPOINTS:
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        if not (temp_dir / CHECKPOINTS).exists():
            shutil.rmtree(temp_dir, ignore_errors=True)

    def clean(self) -> list[Path]:
        """Remove the cache and the release folder; return what was removed."""
        removed = [p for p in (self.cache, self.root / "release") if p.exists()]
        for path in removed:
            shutil.rmtree(path)
        return removed

    def record_latest(self, stage: str, key: str) -> None:
        """Remember `key` as the latest entry a run used for `stage` (what `clean --keep-latest` keeps)."""
        latest = self.latest()
        latest[stage] = key
        temp = self.cache / f"{LATEST}.{os.getpid()}"
        temp.write_text(json.dumps(latest, indent=2, sort_keys=True) + "\n")
        os.replace(temp, self.cache / LATEST)

    def latest(self) -> dict[str, str]:
        try:
            latest = json.loads((self.cache / LATEST).read_text())
            return latest if isinstance(latest, dict) else {}
        except (OSError, ValueError):
            return {}

    def clean_keep_latest(self) -> list[Path]:
        """Remove every entry and work directory except the latest run's entry of each stage."""
        latest = self.latest()
        removed = []
        for path in sorted(self.cache.glob("*/*")):
            if not path.is_dir() or path.name == latest.get(path.parent.name):
                continue
            key = path.name.removeprefix(TEMP_PREFIX)
            with open(path.parent / f"{LOCK_PREFIX}{key}", "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run is using it
                if path.name.startswith(TEMP_PREFIX):
                    shutil.rmtree(path, ignore_errors=True)  # a work directory: never trusted anyway
                else:
                    self._remove(path)
                removed.append(path)
        return removed

    def _remove(self, path: Path) -> None:
        # Rename first so a half-removed entry never looks like a published one.
        trash = path.parent / f"{TEMP_PREFIX}removed-{path.name[:16]}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def verify_entry(path: Path, key: str) -> tuple[str | None, dict[str, Any]]:
    """(None, manifest) when the entry is intact, else (what is wrong, {})."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest", {}
    except (OSError, ValueError):
        return "unreadable manifest", {}
    if not isinstance(manifest, dict) or manifest.get("key") != key or not isinstance(manifest.get("files"), dict):
        return "manifest does not match its key", {}
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing", {}
        if sha256_file(file) != expected:
            return f"{name} sha256 mismatch", {}
    return None, manifest


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
