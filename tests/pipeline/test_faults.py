"""Fault injection: a stage killed with SIGKILL mid-run publishes nothing, and the next run resumes."""

import os
import signal
import subprocess
import sys
import time

from pipeline.cache import ArtifactStore
from pipeline.config import load_config
from pipeline.runner import needed_stages, plan_keys

SETS = ["teacher.width=4", "teacher.epochs=20"]


def test_sigkill_mid_stage_publishes_nothing_and_the_next_run_resumes(tmp_path):
    store = ArtifactStore(tmp_path)
    key = plan_keys(load_config(overrides=SETS), needed_stages("teacher"), store)["teacher"]
    checkpoint = tmp_path / "cache" / "teacher" / f".tmp-{key}" / "checkpoints" / "teacher.pt"
    command = [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "--artifacts",
        str(tmp_path),
        "stage",
        "teacher",
        *[arg for item in SETS for arg in ("--set", item)],
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.with_suffix(".sha256").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert store.lookup("teacher", key) is None  # killed: nothing published
    assert store.lookup("data", plan_keys(load_config(overrides=SETS), needed_stages("data"), store)["data"])

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "teacher: resuming after epoch" in rerun.stderr
    artifact = store.lookup("teacher", key)
    assert artifact is not None and [row["epoch"] for row in artifact.metrics["history"]] == list(range(1, 21))
    assert store.verify() == (2, [])
