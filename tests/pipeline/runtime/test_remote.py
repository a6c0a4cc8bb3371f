"""Measuring on a device over SSH, against a real sshd on 127.0.0.1 (tests/sshd.py): the copy-once cache, the
environment record, and every failure mode as one line."""

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from pipeline.errors import ConfigError, StageError
from pipeline.runtime import bundle, environment, remote, remote_runner, targets
from pipeline.runtime.sessions import SessionSettings
from tests.pipeline.runtime.test_memory import matmul_model

QUICK = dict(warmup_runs=2, warmup_seconds=0.0, min_runs=20, min_seconds=0.0)


def cache_of(url: str) -> Path:
    return Path(url.split("cache=", 1)[1])


def with_query(url: str, **changes: str) -> str:
    """The device URL with its python= (or cache=) replaced."""
    base, query = url.split("?", 1)
    fields = dict(item.split("=", 1) for item in query.split("&"))
    fields.update({key: quote(value, safe="/") for key, value in changes.items()})
    return base + "?" + "&".join(f"{key}={value}" for key, value in fields.items())


def staged_request(tmp_path: Path, settings=None, **options) -> tuple[dict, dict]:
    """A bench request for one small model at batch 1, and where its files are here."""
    matmul_model(tmp_path / "model.onnx", 32)
    files = targets.Files()
    model = files.add(tmp_path / "model.onnx")
    feed = files.save(np.ones((1, 32), dtype=np.float32), tmp_path, "feed")
    settings = settings if settings is not None else [SessionSettings(1)]
    request = targets.request({"model": model}, {1: feed}, 1, QUICK, settings=settings, rounds=2, **options)
    return request, files.located


@pytest.mark.parametrize(
    "url",
    ["pi@raspberrypi.local", "http://host", "ssh://", "ssh://host:notaport", "ssh://host?pyth=/x", "ssh://host/path"],
)
def test_a_malformed_target_is_a_one_line_config_error(url):
    with pytest.raises(ConfigError, match="expected ssh://"):
        targets.check(url)


def test_a_target_url_names_user_port_python_and_cache():
    target = remote.parse("ssh://pi@raspberrypi.local:2222?python=/opt/venv/bin/python3&cache=/data/ef")
    assert (target.user, target.host, target.port, target.python, target.cache) == (
        "pi",
        "raspberrypi.local",
        2222,
        "/opt/venv/bin/python3",
        "/data/ef",
    )
    assert remote.parse("ssh://board").python == "python3" and remote.parse("ssh://board").cache == "~/.cache/edgeforge"


def test_the_runner_is_the_same_bytes_every_time():
    assert bundle.build() == bundle.build()


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_the_device_describes_itself(device):
    described = targets.describe(device, 60)
    here = environment.identity()
    # The loopback device is this machine: its record must say so, field by field.
    for key in ("cpu", "machine", "cores", "cpu_flags_sha256", "onnxruntime", "providers"):
        assert described[key] == here[key]
    assert described["isa"] == environment.isa() and described["python"].count(".") == 2


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_files_are_copied_once_and_verified_on_the_device(device, tmp_path, monkeypatch):
    request, located = staged_request(tmp_path)
    copied: list[list[str]] = []
    real_upload = remote.upload
    monkeypatch.setattr(remote, "upload", lambda *a: copied.append(real_upload(*a)) or copied[-1])
    first = targets.bench(device, request, located, 120)
    second = targets.bench(device, request, located, 120)
    runner = bundle.digest()
    assert sorted(copied[0]) == sorted([runner, *located]) and copied[1] == []
    cached = sorted(path.name for path in cache_of(device).iterdir())
    assert cached == sorted([runner, *located])  # each file under its own sha256, nothing else left behind
    for answer in (first, second):
        measured = answer["models"]["model"]
        stats = measured["latency"]["CPUExecutionProvider"]["1"]
        assert stats["p50_ms"] > 0 and len(stats["round_medians_ms"]) == 2
        assert measured["settings_label"] == "1 thread, spinning off, all"
        assert answer["environment"]["cores"] == environment.cores()


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_files_seen_on_the_device_are_not_asked_about_again_until_a_request_fails(device, tmp_path, monkeypatch):
    request, located = staged_request(tmp_path)
    commands: list[list[str]] = []
    real_run = remote.run
    monkeypatch.setattr(
        remote, "run", lambda target, words, *rest: commands.append(words) or real_run(target, words, *rest)
    )

    def asked() -> int:
        return sum(remote.HAVE in words for words in commands)

    targets.bench(device, request, located, 120)
    targets.bench(device, request, located, 120)
    assert asked() == 1  # the second request's files had been seen there
    (cache_of(device) / request["models"]["model"]).unlink()  # someone empties the device's cache meanwhile
    with pytest.raises(StageError, match=r"the runner failed on the device \(exit 1\): .*exist"):
        targets.bench(device, request, located, 120)
    answer = targets.bench(device, request, located, 120)  # asked again, copied again, measured
    assert asked() == 2 and answer["models"]["model"]["latency"]["CPUExecutionProvider"]["1"]["p50_ms"] > 0


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_one_runner_on_the_device_answers_a_runs_requests_and_ends_with_it(device, tmp_path, monkeypatch):
    request, located = staged_request(tmp_path)
    cache = cache_of(device)
    targets.bench(device, request, located, 120)
    running = runner_processes(cache)
    assert len(running) == 1
    assert targets.identity(device, 60)["cores"] == environment.cores()
    targets.bench(device, request, located, 120)
    assert runner_processes(cache) == running  # one Python on the device answered all three
    monkeypatch.setattr(remote_runner, "REUSE_S", 0.0)  # idle too long: it may be ending there, so not reused
    targets.bench(device, request, located, 120)
    replaced = runner_processes(cache)
    assert wait_for(lambda: runner_processes(cache) == replaced != running, 10)
    (runner,) = [r for (target, _), r in remote_runner._RUNNERS.items() if target.url == device]
    runner.close()  # what the process does at exit: its stdin closes, and it ends
    assert wait_for(lambda: not runner_processes(cache), 10)


def test_calls_to_a_device_share_one_login_closed_when_the_process_exits(device, loopback_sshd, monkeypatch):
    # A folder of shared connections of this test's own: others in this process may hold one open.
    monkeypatch.setattr(remote, "_shared_connections", functools.cache(remote._shared_connections.__wrapped__))
    log = loopback_sshd.dir / "sshd.log"

    def logins() -> int:
        return log.read_text(errors="replace").count("Accepted publickey")

    before, target = logins(), remote.parse(device)
    for _ in range(3):
        assert remote.run(target, ["true"], 30, b"").returncode == 0
    assert logins() - before == 1  # one handshake carried the three calls
    folder = remote._shared_connections()
    assert masters(folder)
    remote._close_shared(folder)  # what the process does at exit
    assert not Path(folder).exists() and wait_for(lambda: not masters(folder), 5)


def masters(folder: str) -> list[int]:
    """The ssh processes holding a shared connection of `folder` (their title names its socket)."""
    return [pid for pid, argv in command_lines() if any(folder in word for word in argv)]


def command_lines():
    """(pid, argv) of every process still there."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            yield int(pid), Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_the_device_searches_settings_and_measures_memory(device, tmp_path):
    request, located = staged_request(tmp_path, settings=[SessionSettings(1), SessionSettings(2)], memory=True)
    measured = targets.bench(device, request, located, 120)["models"]["model"]
    assert [entry["label"] for entry in measured["settings_search"]] == [
        "1 thread, spinning off, all",
        "2 threads, spinning off, all",
    ]
    assert sum(entry["chosen"] for entry in measured["settings_search"]) == 1
    assert measured["memory"]["peak_rss_mb"] > measured["memory"]["baseline_rss_mb"] > 0


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_a_provider_the_device_lacks_is_skipped_never_replaced(device, tmp_path):
    request, located = staged_request(tmp_path, providers=("cpu", "openvino"))
    answer = targets.bench(device, request, located, 120)
    assert "OpenVINOExecutionProvider" in answer["skipped_providers"]["openvino"]
    assert set(answer["models"]["model"]["latency"]) == {"CPUExecutionProvider"}


def test_an_unreachable_host_is_one_line(device, tmp_path):
    request, located = staged_request(tmp_path)
    closed = device.replace("edgeforge-test-device", f"edgeforge-test-device:{free_port()}")
    with pytest.raises(StageError, match="cannot connect .*Connection refused.*check the host, the port"):
        targets.bench(closed, request, located, 60)


def test_a_refused_login_is_one_line(device, tmp_path):
    request, located = staged_request(tmp_path)
    with pytest.raises(StageError, match="refused the login .*Permission denied.* without a password"):
        targets.bench(device.replace("ssh://", "ssh://no-such-user-here@"), request, located, 60)


def test_no_python_on_the_device_says_what_to_install(device, tmp_path):
    request, located = staged_request(tmp_path)
    with pytest.raises(StageError, match="no /no/such/python3 on the device: install Python 3.10"):
        targets.bench(with_query(device, python="/no/such/python3"), request, located, 60)


def bare_python(tmp_path: Path, site: Path | None = None) -> Path:
    """A Python without site-packages (and with only `site` on its path): a device that lacks packages."""
    script = tmp_path / "python3"
    path = f"PYTHONPATH={site} " if site else ""
    script.write_text(f'#!/bin/sh\n{path}exec {sys.executable} -S "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_a_device_without_numpy_says_to_install_it(device, tmp_path):
    request, located = staged_request(tmp_path)
    with pytest.raises(StageError, match="lacks numpy: install it there .*pip install numpy onnxruntime"):
        targets.bench(with_query(device, python=str(bare_python(tmp_path))), request, located, 60)


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_a_device_with_numpy_but_without_onnxruntime_says_to_install_it(device, tmp_path):
    import numpy

    site = tmp_path / "site"  # numpy, and nothing else of this interpreter's packages
    site.mkdir()
    packages = Path(numpy.__file__).parents[1]
    for name in os.listdir(packages):
        if name == "numpy" or name.startswith("numpy.libs") or name.startswith("numpy-"):
            (site / name).symlink_to(packages / name)
    request, located = staged_request(tmp_path)
    python = bare_python(tmp_path, site)
    assert subprocess.run([python, "-c", "import numpy"]).returncode == 0  # the device does have numpy
    with pytest.raises(StageError, match="lacks onnxruntime: install it there"):
        targets.bench(with_query(device, python=str(python)), request, located, 60)


def test_a_copy_that_arrives_corrupted_takes_no_name(device, tmp_path, monkeypatch):
    request, located = staged_request(tmp_path)
    model = request["models"]["model"]
    real = remote.read_for_upload
    monkeypatch.setattr(
        remote, "read_for_upload", lambda path: real(path)[:-1] + b"!" if path == located[model] else real(path)
    )
    with pytest.raises(StageError, match="model.onnx did not arrive intact .*sha256 mismatch.* run again"):
        targets.bench(device, request, located, 60)
    cached = [path.name for path in cache_of(device).iterdir()]
    assert model not in cached and not [name for name in cached if name.startswith(".tmp")]


def runner_processes(cache: Path) -> list[int]:
    """The device's runner processes: Python running the launcher with this cache folder (not the local ssh client
    nor the device's shell, whose command lines say the same words)."""
    return [
        pid
        for pid, argv in command_lines()
        if Path(argv[0]).name.startswith("python") and str(cache) in argv and any("runpy" in a for a in argv)
    ]


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def long_request(tmp_path: Path) -> tuple[dict, dict]:
    request, located = staged_request(tmp_path)
    request["preset"] = dict(QUICK, min_seconds=30.0)  # far longer than the tests wait
    return request, located


@pytest.mark.slow  # waits out a timeout
def test_a_device_that_does_not_answer_in_time_fails_and_is_not_left_running(device, tmp_path):
    request, located = long_request(tmp_path)
    started = time.monotonic()
    with pytest.raises(StageError, match=r"no answer within 4 s \(bench.target_timeout_s\)"):
        targets.bench(device, request, located, 4)
    assert time.monotonic() - started < 20
    assert wait_for(lambda: not runner_processes(cache_of(device)), 10)  # the runner saw its ssh session go


@pytest.mark.slow  # a Python started on the device over SSH: seconds each
def test_a_connection_that_drops_mid_bench_is_one_line(device, tmp_path, loopback_sshd):
    request, located = long_request(tmp_path)
    cache = cache_of(device)
    outcome = {}

    def bench():
        try:
            targets.bench(device, request, located, 60)
        except StageError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=bench)
    thread.start()
    assert wait_for(lambda: runner_processes(cache), 30)
    for pid in sessions_of(loopback_sshd.process.pid):  # the server side of the connection goes away
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    thread.join(30)
    assert not thread.is_alive()
    assert "connection dropped" in outcome["error"] or "session ended without an answer" in outcome["error"]
    assert wait_for(lambda: not runner_processes(cache), 10)


def sessions_of(listener: int) -> list[int]:
    """sshd's per-connection processes: every descendant of the listener (the privileged monitor and the session)."""
    parents = {}
    for pid, argv in command_lines():
        if argv[0] != sys.executable:  # not the runner
            try:
                parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [listener]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def free_port() -> int:
    from tests.sshd import free_port as port

    return port()
