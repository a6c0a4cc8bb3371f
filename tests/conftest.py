"""Shared fixtures: one tiny pipeline run on digits, reused by the tests that inspect its artifacts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.cache import ArtifactStore

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist every worker gets one core's worth of threads (and so does every process a test starts):
    # two workers with two threads each on a 2-core machine would only fight over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Small enough to run in seconds, big enough that accuracies mean something on digits.
TINY = (
    "teacher.width=16",
    # The suite trains on the CPU on every machine (CI has none with a GPU); the CUDA path has its own tests.
    "teacher.device=cpu",
    "distill.device=cpu",
    "prune.device=cpu",
    "teacher.epochs=8",
    "distill.epochs=8",
    "prune.ratio=0.5",  # not the default 0.25: the tests assert what halving the channels does
    "prune.finetune_epochs=4",
    # A timing over a budget is taken again at once: the tests' budgets are set to be missed, not waited out.
    "prune.retime_gap_s=0",
    # No thread probe before the searches (a minute of timing): tests/pipeline/search/test_thread_probe.py has its own.
    "prune.thread_probe_s=0",
    "quantize.calibration_samples=256",
    # Post-training int8 as the tests of its arguments expect: on 143 validation images one image is more than
    # quantize.max_drop, so `auto` would fine-tune by chance. tests/stages/test_quantize.py runs QAT on this run.
    "quantize.qat=never",
    "bench.batch_sizes=[1, 8]",
    "bench.warmup_runs=2",
    "bench.min_runs=20",
    "bench.min_seconds=0",
    "bench.warmup_seconds=0",
    "bench.rounds=2",
    "bench.optimization=[all]",  # with spinning off: 2 settings tried per model (1 and 2 threads) instead of 12
    "bench.spinning=[false]",
    # Eight epochs on 1,295 digits leave the small models a few points apart, and the validation split has 143
    # images: gates this loose let the tests that need a passing sign-off pass whichever model wins.
    "signoff.min_accuracy=0.8",
    "signoff.max_drop_vs_teacher=0.1",
    "signoff.max_drop_vs_student=0.1",
)


# Cheaper still, for tests of the plumbing (locks, ranks, publishing) that assert nothing about accuracy.
FAST = (
    "teacher.width=8",
    "teacher.device=cpu",
    "distill.device=cpu",
    "prune.device=cpu",
    "teacher.epochs=2",
    "distill.epochs=2",
    "distill.baseline=false",
    "prune.finetune_epochs=1",
    "prune.scratch_baseline=false",
    "prune.retime_gap_s=0",
    "prune.thread_probe_s=0",
    "quantize.calibration_samples=64",
    "quantize.qat=never",
    "bench.batch_sizes=[1]",
    "bench.warmup_runs=2",
    "bench.min_runs=20",
    "bench.min_seconds=0",
    "bench.warmup_seconds=0",
    "bench.rounds=2",
    "bench.tune=false",
    "bench.memory=false",
    # Two epochs do not reach the default accuracy gates, and these tests need a run that exits 0.
    "signoff.min_accuracy=0",
    "signoff.max_drop_vs_teacher=1",
    "signoff.max_drop_vs_student=1",
)


def session_folder(tmp_path_factory) -> Path:
    """This test session's folder: under pytest-xdist the one above every worker's own, which all workers share."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def shared_cache(tmp_path_factory, name: str, overrides) -> Path:
    """The cache of a pipeline run built once per test session, by whichever worker gets there first (the others
    wait on the store's per-stage locks and reuse its entries)."""
    from pipeline.runner import load_config, run_pipeline  # here: pytest-xdist's controller need not import torch

    shared = ArtifactStore(session_folder(tmp_path_factory) / f"{name}-artifacts")
    run_pipeline(load_config(overrides=overrides), shared)
    return shared.cache


def shared_run(tmp_path_factory, name: str, overrides) -> tuple[ArtifactStore, list]:
    """That run (shared_cache) handed to this worker in a store of its own (tests add to it and replace its
    release): a copy of the shared cache, whose entries are verified as any are."""
    from pipeline.runner import load_config, run_pipeline

    store = copy_of(shared_cache(tmp_path_factory, name, overrides), tmp_path_factory.mktemp(name))
    return store, run_pipeline(load_config(overrides=overrides), store)


def copy_of(cache: Path, root: Path) -> ArtifactStore:
    """A store at `root` holding the published entries of `cache` (another worker may be writing beside them)."""
    store = ArtifactStore(root)
    for entry in cache.glob("*/*"):
        if entry.is_dir() and not entry.name.startswith("."):
            shutil.copytree(entry, store.cache / entry.parent.name / entry.name)
    return store


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(store, {stage name: StageResult}) of a complete tiny pipeline run (shared_run)."""
    store, results = shared_run(tmp_path_factory, "tiny", TINY)
    return store, {result.name: result for result in results}


@pytest.fixture(scope="session")
def loopback_sshd():
    """A real sshd on 127.0.0.1 with a throwaway key (tests/sshd.py), one per test process. Without openssh-server
    the tests that need it skip, except under EDGEFORGE_REQUIRE_SSHD=1 (.ci/run installs it and sets that)."""
    from tests.sshd import SSHD, LoopbackSshd

    required = os.environ.get("EDGEFORGE_REQUIRE_SSHD") == "1"
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        message = "OpenSSH (sshd, ssh, ssh-keygen) is not installed: apt-get install openssh-server"
        pytest.fail(message) if required else pytest.skip(message)
    server = LoopbackSshd()
    try:
        server.start()
    except RuntimeError as error:
        pytest.fail(str(error)) if required else pytest.skip(str(error))
    yield server
    server.stop()


@pytest.fixture
def device(loopback_sshd, monkeypatch, tmp_path):
    """A remote target on the loopback sshd with this interpreter (numpy and onnxruntime) and a fresh device cache;
    EDGEFORGE_SSH_COMMAND points ssh at the server's own client config, so ~/.ssh is never read. The test's runner
    on the device ends with the test (each test's own cache: a runner each), not when the worker exits."""
    from pipeline.runtime import remote_runner

    monkeypatch.setenv("EDGEFORGE_SSH_COMMAND", loopback_sshd.ssh_command())
    url = f"ssh://{loopback_sshd.alias}?python={sys.executable}&cache={tmp_path / 'device-cache'}"
    yield url
    for (target, _), runner in list(remote_runner._RUNNERS.items()):
        if target.url == url:
            runner.close()


def edgeforge_command(artifacts, *args, sets=()) -> list[str]:
    """The `edgeforge` command line as a subprocess runs it (a fresh interpreter: real exit codes and signals)."""
    overrides = [arg for item in sets for arg in ("--set", item)]
    return [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "--artifacts",
        str(artifacts),
        *args,
        *overrides,
    ]


def pytest_collection_modifyitems(config, items):
    """The slow tests first: pytest-xdist then starts the longest work at once and fills the end with short tests,
    instead of leaving one core idle while another finishes a long test last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
