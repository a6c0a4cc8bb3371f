"""Measuring on the device you deploy to, over SSH: `ssh://[user@]host[:port][?python=/path/to/python3]`.

The system OpenSSH client does the connecting, so ~/.ssh/config, keys, the agent and jump hosts work as they do for
`ssh host` (EDGEFORGE_SSH_COMMAND replaces the plain `ssh` command, as GIT_SSH_COMMAND does for git). The device
needs a POSIX shell, Python 3.10 or newer, numpy and onnxruntime; nothing of edgeforge is installed there.

Files go into a cache folder on the device (`~/.cache/edgeforge` unless ?cache= names another), each named by its
sha256: one call asks which the device has, and one more streams the missing ones through ssh's stdin, each into a
temp file that the device hashes and renames into place only when the hash matches. Nothing is copied twice; a
corrupted copy never takes a file's name. Then the runner (bundle.py), one kept up for the run (remote_runner.py),
measures with the code this machine measures with and answers each request with one JSON line. All of a process's
calls to one device share one SSH connection (OpenSSH's ControlMaster), closed when the process exits.

Every failure is one line naming the target and what to do: the host unreachable or the key refused, no python3 or
no numpy/onnxruntime there, a connection that dropped, a copy that arrived corrupted, a device that did not answer
within the time allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import shlex
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, StageError

DEFAULT_CACHE = "~/.cache/edgeforge"
SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=15",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
)
# Run on the device with its python3: which of the named files its cache has; and one file from stdin.
HAVE = (
    "import os, sys; d = os.path.expanduser(sys.argv[1]); "
    "print(' '.join(s for s in sys.argv[2:] if os.path.isfile(os.path.join(d, s))))"
)
# Files from stdin, each a header line "SHA256 SIZE" and SIZE bytes: each written to a temp file while hashed, and
# renamed to its sha256 only when the hash matches; the first that does not match ends it (exit 3).
PUT = (
    "import hashlib, os, sys; d = os.path.expanduser(sys.argv[1]); os.makedirs(d, exist_ok=True); "
    "temp = os.path.join(d, '.tmp-%d' % os.getpid()); stream = sys.stdin.buffer\n"
    "for header in iter(stream.readline, b''):\n"
    "    digest, size = header.decode().split(); size = int(size); h = hashlib.sha256()\n"
    "    with open(temp, 'wb') as f:\n"
    "        while size:\n"
    "            block = stream.read(min(size, 1 << 20))\n"
    "            if not block: break\n"
    "            h.update(block); f.write(block); size -= len(block)\n"
    "    if h.hexdigest() != digest:\n"
    "        os.unlink(temp); print('sha256 mismatch for %s: got %s' % (digest, h.hexdigest())); sys.exit(3)\n"
    "    os.replace(temp, os.path.join(d, digest))"
)
# Runs the cached runner (a zipapp) with the cache folder as its argument, ~ expanded there (remote_runner.py).
LAUNCH = (
    "import os, runpy, sys; p = os.path.join(os.path.expanduser(sys.argv[1]), sys.argv[2]); "
    "sys.argv = [p, sys.argv[1]]; runpy.run_path(p, run_name='__main__')"
)


@dataclasses.dataclass(frozen=True)
class Target:
    url: str  # as the user wrote it: its name in reports and keys
    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    cache: str = DEFAULT_CACHE


def parse(url: str) -> Target:
    """An `ssh://[user@]host[:port][?python=PATH&cache=DIR]` target, or a one-line ConfigError."""
    parsed = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parsed.query)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    unknown = sorted(set(query) - {"python", "cache"})
    if parsed.scheme != "ssh" or not parsed.hostname or port == -1 or unknown or parsed.path not in ("", "/"):
        raise ConfigError(
            f"target {url!r} is not allowed: expected ssh://[user@]host[:port] with optional ?python=/path/to/python3 "
            "and &cache=DIR, or local"
        )
    return Target(
        url=url,
        host=parsed.hostname,
        user=parsed.username,
        port=port,
        python=query.get("python", ["python3"])[0],
        cache=query.get("cache", [DEFAULT_CACHE])[0],
    )


def ssh_argv(target: Target, remote: list[str]) -> list[str]:
    """The local command that runs `remote` (argv words, quoted for the device's shell) on the target."""
    return [*_ssh(target), " ".join(shlex.quote(word) for word in remote)]


def _ssh(target: Target) -> list[str]:
    """ssh with our options and the target's destination, sharing one connection per target (_shared_connections)."""
    base = shlex.split(os.environ.get("EDGEFORGE_SSH_COMMAND", "ssh"))
    destination = f"{target.user}@{target.host}" if target.user else target.host
    port = ["-p", str(target.port)] if target.port else []
    if os.name != "posix":  # Windows' OpenSSH cannot share a connection
        return [*base, *SSH_OPTIONS, *port, destination]
    sharing = ["-o", "ControlMaster=auto", "-o", f"ControlPath={_shared_connections()}/%C", "-o", "ControlPersist=60"]
    return [*base, *SSH_OPTIONS, *sharing, *port, destination]


@functools.cache
def _shared_connections() -> str:
    """The folder of this process's shared connections: one SSH connection per target carries every call (a
    search makes hundreds: which files the device has, the copies, each measurement), instead of a handshake per
    call (0.30 s on loopback, more to a board). Closed when the process exits; an idle one closes after 60 s.
    Under /tmp where there is one: a socket's path must stay under 104 bytes, and macOS's TMPDIR alone is ~50."""
    folder = tempfile.mkdtemp(prefix="edgeforge-ssh-", dir="/tmp" if os.path.isdir("/tmp") else None)
    atexit.register(_close_shared, folder)
    return folder


def _close_shared(folder: str) -> None:
    """Close each connection through its socket: no config is read (EDGEFORGE_SSH_COMMAND's may be gone by now),
    and the destination does not matter. One that does not close ends itself after 60 s idle."""
    ssh = shlex.split(os.environ.get("EDGEFORGE_SSH_COMMAND", "ssh"))[0]
    for socket in Path(folder).glob("*"):  # none when closed before
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [ssh, "-F", os.devnull, "-o", f"ControlPath={socket}", "-O", "exit", "localhost"],
                capture_output=True,
                timeout=5,
            )
    shutil.rmtree(folder, ignore_errors=True)


def run(target: Target, remote: list[str], timeout: float, stdin: bytes) -> subprocess.CompletedProcess:
    """Run `remote` on the target with `stdin`. A connection failure, a missing python and a timeout become one-line
    errors."""
    try:
        done = subprocess.run(ssh_argv(target, remote), input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StageError(no_answer(target, timeout)) from None
    except FileNotFoundError as error:
        raise ConfigError(f"{target.url}: cannot run {error.filename!r}: install the OpenSSH client") from None
    check_exit(target, done.returncode, done.stderr)
    return done


def no_answer(target: Target, timeout: float) -> str:
    return (
        f"{target.url}: no answer within {timeout:g} s (bench.target_timeout_s): the device is too slow or the "
        "connection hangs; nothing was cached"
    )


def check_exit(target: Target, returncode: int, stderr: bytes) -> None:
    """ssh's exit status said as one line: no python on the device (127), or ssh's own failure (255)."""
    if returncode == 127:
        raise StageError(
            f"{target.url}: no {target.python} on the device: install Python 3.10 or newer there, or name one with "
            f"?python=/path/to/python3"
        )
    if returncode == 255:
        raise StageError(f"{target.url}: {connection_problem(stderr)}")


def connection_problem(stderr: bytes) -> str:
    """What went wrong on ssh's side (its failures all exit 255), in one line with what to do."""
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if not lines:  # ssh says nothing when the command on the device was killed by a signal
        return (
            "the session ended without an answer (the runner was killed on the device, or the link dropped): run again"
        )
    last = lines[-1]
    if "Permission denied" in last or "Host key verification failed" in last:
        return f"the device refused the login ({last}); `ssh HOST` must work without a password (keys or agent)"
    if "closed by remote host" in last or "Broken pipe" in last or "not responding" in last:
        return f"the connection dropped during the measurement ({last}); nothing was cached: run again"
    return f"cannot connect ({last}); check the host, the port and that `ssh HOST` works"


def upload(target: Target, files: dict[str, Path], timeout: float) -> list[str]:
    """Copy the files (sha256 -> local path) the device's cache lacks, all in one connection; return the digests
    copied. The device is asked only about files this process has not seen there: a search times the same files
    again and again (repeats, the plateau's rounds), and the cache only ever gains files (forget undoes that)."""
    unseen = [digest for digest in files if (target, digest) not in _SEEN]
    if not unseen:
        return []
    have = run(target, [target.python, "-c", HAVE, target.cache, *unseen], timeout, b"").stdout.decode().split()
    missing = {digest: files[digest] for digest in unseen if digest not in have}
    if not missing:
        _SEEN.update((target, digest) for digest in unseen)
        return []
    stream = b"".join(
        f"{digest} {len(data)}\n".encode() + data
        for digest, data in ((digest, read_for_upload(path)) for digest, path in missing.items())
    )
    done = run(target, [target.python, "-c", PUT, target.cache], timeout, stream)
    if done.returncode != 0:
        got = done.stdout.decode().strip() or done.stderr.decode(errors="replace").strip()
        which = next((path.name for digest, path in missing.items() if digest in got), "a file")
        raise StageError(f"{target.url}: {which} did not arrive intact ({got}): it was not cached; run again")
    _SEEN.update((target, digest) for digest in unseen)
    return list(missing)


_SEEN: set[tuple[Target, str]] = set()  # (target, sha256) of the files this process saw in a device's cache


def forget(target: Target) -> None:
    """Ask the device again next time: a request there failed, perhaps for a file someone removed from its cache."""
    _SEEN.difference_update({seen for seen in _SEEN if seen[0] == target})


def read_for_upload(path: Path) -> bytes:
    return Path(path).read_bytes()


def device_problem(answer: dict[str, Any], target: Target) -> str:
    if answer["error"] == "missing":
        return (
            f"the device's {target.python} lacks {answer['module']}: install it there (pip install numpy onnxruntime, "
            "or your platform's onnxruntime build), or name another interpreter with ?python="
        )
    return f"{answer['detail']}: install Python 3.10 or newer on the device, or name one with ?python="
