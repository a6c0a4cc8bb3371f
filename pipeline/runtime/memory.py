"""Memory a deployment needs: the peak resident memory of a fresh process that loads one model and runs it.

Measured in a new Python process (numpy and onnxruntime only, as a deployment has), not in the pipeline's own,
whose peak is the training's; on Linux from /proc/self/status's VmHWM, since getrusage's maximum carries over
the parent's peak into a child started with fork and exec. The child imports, records its resident peak
(`baseline`), creates the session with the model's settings, runs it `runs` times on zeros of the input shape, and
records its peak again (`peak`). The gate compares `peak`; `peak - baseline` is what the model and its session
added to an interpreter with onnxruntime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import StageError
from pipeline.runtime.sessions import INPUT_NAME, SessionSettings

CHILD = """
import json, resource, sys
import numpy as np
import onnxruntime as ort

def peak_mb():
    # Linux: VmHWM, this process image's own peak (ru_maxrss would carry over the parent's from before exec).
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kilobytes elsewhere

args = json.loads(sys.argv[1])
baseline = peak_mb()
options = ort.SessionOptions()
options.intra_op_num_threads = args["threads"]
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, args["optimization"])
options.add_session_config_entry("session.intra_op.allow_spinning", args["spinning"])
session = ort.InferenceSession(args["model"], sess_options=options, providers=["CPUExecutionProvider"])
feed = {args["input"]: np.zeros(args["shape"], dtype=np.float32)}
for _ in range(args["runs"]):
    session.run(None, feed)
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_mb()}))
"""


def peak_memory(path: Path, settings: SessionSettings, shape: list[int], runs: int = 20) -> dict[str, Any]:
    """{"peak_rss_mb", "baseline_rss_mb", "model_rss_mb"} of a fresh process running the model at `shape`."""
    record = settings.record()
    args = {
        "model": str(path),
        "threads": settings.threads,
        "spinning": record["session_config"]["session.intra_op.allow_spinning"],
        "optimization": record["graph_optimization_level"],
        "input": INPUT_NAME,
        "shape": shape,
        "runs": runs,
    }
    # -I: isolated, so nothing of this process's environment (PYTHONPATH, the working directory) is imported.
    done = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageError(f"bench: measuring the memory of {path.name} in a fresh process failed: {last}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "peak_rss_mb": round(measured["peak_mb"], 1),
        "baseline_rss_mb": round(measured["baseline_mb"], 1),
        "model_rss_mb": round(measured["peak_mb"] - measured["baseline_mb"], 1),
        "runs": runs,
        "shape": shape,
    }
