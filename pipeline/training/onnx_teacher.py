"""A teacher that is an ONNX file, as the training loop sees a teacher: a module whose call gives logits.

The file is the teacher stage's wrapped model (pipeline/runtime/onnx_teacher.py): it takes the pipeline's
normalized NCHW batch, so the loop hands it the same augmented batch as the student and nothing is converted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.models.storage import load_model
from pipeline.runtime.sessions import SessionSettings, run_batches, session

FILE = "model.onnx"  # the teacher stage's file when the teacher is an ONNX model


class OnnxTeacher(nn.Module):
    """Logits from onnxruntime (CPU) for a torch batch, returned on the batch's device. No parameters: the loop's
    `.to()` and `.eval()` leave it as it is, and nothing it returns has a gradient."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        # Explicit threads: onnxruntime's default takes every core, beside the training's own torch threads.
        self.threads = threads or max(1, torch.get_num_threads())
        self.session = session(self.path, SessionSettings(threads=self.threads))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        inputs = batch.detach().float().contiguous().cpu().numpy()  # channels_last batches become NCHW
        logits = run_batches(self.session, inputs, batch=max(1, len(inputs)))
        return torch.from_numpy(logits).to(batch.device)

    @torch.no_grad()
    def predict(self, inputs: np.ndarray, batch: int = 512) -> np.ndarray:
        """Logits for normalized float32 NCHW `inputs`."""
        return run_batches(self.session, inputs.astype(np.float32), batch=batch)


def is_onnx_teacher(model_dir: Path) -> bool:
    return (Path(model_dir) / FILE).is_file()


def load_teacher(model_dir: Path) -> nn.Module:
    """The teacher stage's model: a PyTorch module, or an OnnxTeacher when the teacher is an ONNX file."""
    if is_onnx_teacher(model_dir):
        return OnnxTeacher(Path(model_dir) / FILE)
    model, _ = load_model(model_dir)
    return model
