"""Measuring on a target, by name: `local` (this machine) or a device `ssh://[user@]host[:port][?python=...]`.

Both run pipeline/runtime/device.py's `bench` on the same request (here in this process, there from the runner
bundle over SSH: remote.py), so a number from a device was measured exactly as a local one. The bench stage, the
prune stage's latency-budget search and the quantize stage's variant search all measure through here.

Files travel by sha256: a request names them by digest, and `files` says where each digest's file is on this
machine (a device gets the ones its cache lacks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import sha256_file
from pipeline.runtime import device, environment, remote, remote_runner, tuning
from pipeline.runtime.sessions import SessionSettings

LOCAL = "local"
TIMEOUT_S = 600.0  # the longest one call of the searches to a device may take (the bench stage's: its own setting)


def check(target: str) -> None:
    """`local` or a valid ssh:// target; a one-line ConfigError otherwise."""
    if target != LOCAL:
        remote.parse(target)


def identity(target: str, timeout: float) -> dict[str, Any]:
    """The target's identity (environment.identity(), asked of the device): part of the keys of what it measured."""
    if target == LOCAL:
        return environment.identity()
    return remote_runner.request(remote.parse(target), {"op": "environment"}, {}, timeout)


def describe(target: str, timeout: float) -> dict[str, Any]:
    """The target's identity with its ISA flags and Python (what device.py records beside its measurements)."""
    if target == LOCAL:
        return device.device_environment()
    return remote_runner.request(remote.parse(target), {"op": "environment"}, {}, timeout)


def bench(target: str, request: dict[str, Any], files: dict[str, Path], timeout: float) -> dict[str, Any]:
    """device.bench's answer for `request`, measured on the target."""
    if target == LOCAL:
        return device.bench(request, files.__getitem__)
    return remote_runner.request(remote.parse(target), request, files, timeout)


class Files:
    """A request's files: `add(path)` names a file by its sha256; `save(array, work, name)` writes an array first."""

    def __init__(self):
        self.located: dict[str, Path] = {}

    def add(self, path: Path) -> str:
        digest = sha256_file(path)
        self.located[digest] = Path(path)
        return digest

    def save(self, array: np.ndarray, folder: Path, name: str) -> str:
        np.save(folder / f"{name}.npy", array)
        return self.add(folder / f"{name}.npy")


def request(
    models: dict[str, str],
    feeds: dict[int, str],
    batch: int,
    preset: dict[str, float],
    *,
    providers: tuple[str, ...] = ("cpu",),
    settings: list[SessionSettings] | None = None,
    screen: dict[str, float] | None = None,
    refine: dict[str, float] | None = None,
    rounds: int = 3,
    tolerance: float = 0.1,
    retries: int = 1,
    memory: bool = False,
    accuracy: dict[str, Any] | None = None,
    provider_options: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A bench request for device.py. `settings`: the session settings tried per model (fixed when one is given);
    None: every combination of 1..the target's cores threads, spinning and optimization level."""
    if settings is None:
        threads, spinning, optimization = None, [False, True], list(tuning.all_levels())
        tune = True
    else:
        threads = sorted({s.threads for s in settings})
        spinning = sorted({s.spinning for s in settings})
        optimization = sorted({s.optimization for s in settings})
        tune = len(settings) > 1
    return {
        "op": "bench",
        "models": models,
        "feeds": {str(b): digest for b, digest in feeds.items()},
        "settings_batch": batch,
        "batch_sizes": sorted({int(b) for b in feeds}),
        "providers": list(providers),
        "provider_options": provider_options or {},
        "tune": tune,
        "threads": threads,
        "spinning": spinning,
        "optimization": optimization,
        "screen": screen,
        "refine": refine,
        "rounds": rounds,
        "tolerance": tolerance,
        "retries": retries,
        "preset": preset,
        "memory": memory,
        "accuracy": accuracy,
    }
