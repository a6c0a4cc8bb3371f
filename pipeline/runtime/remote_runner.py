"""Requests to a device's runner over SSH: one runner per device stays up for the run and answers one request per
line (device.main), instead of a Python started on the device for every measurement.

A latency-budget search asks a device dozens of times (each candidate, each repeat, the plateau's rounds). Each
call started the device's Python and imported numpy and onnxruntime again: on a loopback "device" a call cost
about 1 s more than the same measurement here (BENCHMARKS.md, "A latency-budget search on a device over SSH").

The files still travel first, by sha256, as remote.upload sends them. A runner that ends (its Python missing
numpy, a failure, the connection dropped) or does not answer in time is one line, as a one-shot call was, and the
next request starts another. Runners are closed when the process exits (their stdin closes: they end), and a
device's runner ends by itself after device.IDLE_S without a request; one idle here for REUSE_S is not reused.
"""

from __future__ import annotations

import atexit
import base64
import collections
import functools
import hashlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, StageError
from pipeline.runtime import bundle, remote

REUSE_S = 60.0  # under device.IDLE_S (120 s): a runner idle this long may be ending there, so start another


def request(target: remote.Target, payload: dict[str, Any], files: dict[str, Path], timeout: float) -> dict[str, Any]:
    """Send the runner and the files, ask the device's runner `payload`, and return its JSON answer."""
    digest, runner_path = _runner_file()
    remote.upload(target, {digest: runner_path, **files}, timeout)
    try:
        return _runner(target, digest).ask(payload, timeout)
    except StageError:
        remote.forget(target)
        raise


@functools.cache
def _runner_file() -> tuple[str, Path]:
    """The runner's sha256 and a file of it, built once per process (a search sends dozens of requests), in a
    folder removed when the process exits."""
    runner = bundle.build()
    folder = Path(tempfile.mkdtemp(prefix="edgeforge-runner-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "runner.pyz").write_bytes(runner)
    return hashlib.sha256(runner).hexdigest(), folder / "runner.pyz"


class Runner:
    """The device's runner (device.main), started over the target's shared SSH connection."""

    def __init__(self, target: remote.Target, digest: str):
        self.target = target
        argv = remote.ssh_argv(target, [target.python, "-c", remote.LAUNCH, target.cache, digest])
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as error:
            raise ConfigError(f"{target.url}: cannot run {error.filename!r}: install the OpenSSH client") from None
        self.answers: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: collections.deque[bytes | None] = collections.deque(maxlen=100)  # None: it ended
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.answers.put), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr.append), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        self.lock = threading.Lock()
        self.last_used = time.monotonic()

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line)
        put(None)

    def usable(self) -> bool:
        return self.process.poll() is None and time.monotonic() - self.last_used < REUSE_S

    def ask(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self.lock:
            try:
                self.process.stdin.write(base64.b64encode(json.dumps(payload).encode()) + b"\n")
                self.process.stdin.flush()
            except OSError:  # it ended already: what it said is read below
                pass
            deadline = time.monotonic() + timeout
            while True:  # the device's launcher may print lines of its own before the answer
                try:
                    line = self.answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    self.close()
                    raise StageError(remote.no_answer(self.target, timeout)) from None
                if line is None or line.startswith(b"{"):
                    break
            self.last_used = time.monotonic()
        if line is None:
            self._ended()
        try:
            answer = json.loads(line)
        except ValueError:
            self.close()
            raise StageError(
                f"{self.target.url}: the runner's answer was not JSON ({line[:80]!r}): run again"
            ) from None
        if "error" in answer:  # the runner's first words: this Python cannot run it (it has exited)
            self.close()
            raise StageError(f"{self.target.url}: {remote.device_problem(answer, self.target)}")
        return answer

    def _ended(self):
        """The runner ended without an answer: why, in one line."""
        returncode = self.process.wait()
        self.readers[1].join(5)
        stderr = b"".join(line for line in self.stderr if line is not None)
        remote.check_exit(self.target, returncode, stderr)
        tail = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise StageError(f"{self.target.url}: the runner failed on the device (exit {returncode}): {tail}")

    def close(self) -> None:
        """Close its stdin (the runner ends), then end the local ssh client."""
        try:
            self.process.stdin.close()
            self.process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


_RUNNERS: dict[tuple[remote.Target, str], Runner] = {}


def _runner(target: remote.Target, digest: str) -> Runner:
    """The target's runner: the one started before while it is usable, else a new one."""
    key = (target, digest)
    if key not in _RUNNERS or not _RUNNERS[key].usable():
        if key in _RUNNERS:
            _RUNNERS.pop(key).close()
        _RUNNERS[key] = Runner(target, digest)
        # Closed before the shared connection it runs over (atexit runs the last registered first).
        atexit.register(_RUNNERS[key].close)
    return _RUNNERS[key]
