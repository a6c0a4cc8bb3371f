"""Fault injection: a stage killed with SIGKILL mid-run publishes nothing, and the next run resumes."""

import os
import signal
import subprocess
import time

import pytest

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config, needed_stages, plan_keys
from tests.conftest import FAST, edgeforge_command

SETS = ["teacher.width=4", "teacher.epochs=20"]
pytestmark = pytest.mark.slow  # pipelines in fresh interpreters


def test_sigkill_mid_stage_publishes_nothing_and_the_next_run_resumes(tmp_path):
    store = ArtifactStore(tmp_path)
    key = plan_keys(load_config(overrides=SETS), needed_stages("teacher"), store)["teacher"]
    checkpoint = tmp_path / "cache" / "teacher" / f".tmp-{key}" / "checkpoints" / "teacher.pt"
    command = edgeforge_command(tmp_path, "stage", "teacher", sets=SETS)
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


def test_two_runs_at_once_on_one_store_build_each_stage_once(tmp_path):
    import json

    command = edgeforge_command(tmp_path, "run", "--json", sets=FAST)
    first, second = (
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    )
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    runs = [{s["name"]: s["cached"] for s in json.loads(stdout)["stages"]} for stdout, _ in outputs]
    for stage in runs[0]:
        assert [runs[0][stage], runs[1][stage]].count(False) == 1, stage  # built by exactly one of them
    store = ArtifactStore(tmp_path)
    checked, problems = store.verify()
    assert checked == 8 and problems == []
    assert len(list((tmp_path / "release").iterdir())) == 7
