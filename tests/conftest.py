"""Shared fixtures: one tiny pipeline run on digits, reused by the tests that inspect its artifacts."""

from __future__ import annotations

import sys

import pytest

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config, run_pipeline

# Small enough to run in seconds, big enough that accuracies mean something on digits.
TINY = (
    "teacher.width=16",
    # The suite trains on the CPU on every machine (CI has none with a GPU); the CUDA path has its own tests.
    "teacher.device=cpu",
    "distill.device=cpu",
    "prune.device=cpu",
    "teacher.epochs=8",
    "distill.epochs=8",
    "prune.finetune_epochs=4",
    "quantize.calibration_samples=256",
    "bench.batch_sizes=[1, 8]",
    "bench.warmup_runs=2",
    "bench.min_runs=20",
    "bench.min_seconds=0",
    "bench.warmup_seconds=0",
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(store, {stage name: StageResult}) of a complete tiny pipeline run."""
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    results = run_pipeline(load_config(overrides=TINY), store)
    return store, {result.name: result for result in results}


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
