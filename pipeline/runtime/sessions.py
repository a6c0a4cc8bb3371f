"""onnxruntime sessions with explicit, recorded options, and running a model over batches of inputs.

The options that change a model's latency are a `SessionSettings`: intra-op threads, whether idle threads spin,
and the graph optimization level. The rest is fixed: one inter-op thread, sequential execution. A deployment uses
the settings measured fastest for its model (pipeline/runtime/tuning.py) and ships them in deploy.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPTIMIZATION_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    threads: int = 1  # intra-op threads
    spinning: bool = False  # idle intra-op threads spin (lower latency, but they burn a core between calls)
    optimization: str = "all"  # graph optimization level: basic, extended or all

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = OPTIMIZATION_LEVELS[self.optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        options.log_severity_level = 3
        return options

    def record(self) -> dict[str, Any]:
        """The session options as deploy.json and the report state them (onnxruntime's names)."""
        return {
            "intra_op_num_threads": self.threads,
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": OPTIMIZATION_LEVELS[self.optimization].name,
            "session_config": {"session.intra_op.allow_spinning": "1" if self.spinning else "0"},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SessionSettings:
        optimization = next(k for k, v in OPTIMIZATION_LEVELS.items() if v.name == record["graph_optimization_level"])
        spinning = record["session_config"]["session.intra_op.allow_spinning"] == "1"
        return cls(record["intra_op_num_threads"], spinning, optimization)

    def label(self) -> str:
        return f"{thread_count(self.threads)}, spinning {'on' if self.spinning else 'off'}, {self.optimization}"


def thread_count(threads: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{threads} thread{'s' * (threads > 1)}"


def session(path: Path, settings: SessionSettings | None = None) -> ort.InferenceSession:
    """A CPU session with `settings` (default: one thread, spinning off), for computing outputs."""
    options = (settings or SessionSettings()).options()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_batches(sess: ort.InferenceSession, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits for float32 NCHW `inputs`, in batches."""
    outputs = [sess.run([OUTPUT_NAME], {INPUT_NAME: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    return np.concatenate(outputs)
