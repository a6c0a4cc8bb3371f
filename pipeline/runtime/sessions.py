"""onnxruntime sessions with explicit, recorded options, and running a model over batches of inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with explicit, recorded options (see session_options_record)."""
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads steal CPU from whatever else runs; off, and recorded, for honest numbers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def session_options_record(threads: int) -> dict[str, object]:
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "allow_spinning": False,
    }


def run_batches(sess: ort.InferenceSession, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits for float32 NCHW `inputs`, in batches."""
    outputs = [sess.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    return np.concatenate(outputs)
