"""Where training runs: CPU or CUDA, and the pinned host buffers that feed a GPU without stalling the CPU."""

from __future__ import annotations

import torch

from pipeline.errors import StageError
from pipeline.training import distributed


class PinnedStaging:
    """Host-to-GPU copies of each batch's tensors through page-locked buffers, two sets used in turn.

    A copy from pageable memory makes the CPU wait for the GPU; from pinned memory it runs asynchronously, so
    the CPU prepares the next batch while the GPU trains on this one. A buffer set is refilled only after its
    previous copies have finished.
    """

    def __init__(self) -> None:
        self.buffers: list[dict[int, torch.Tensor]] = [{}, {}]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def to_device(self, tensors: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
        turn, self.turn = self.turn, 1 - self.turn
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()
        buffers, moved = self.buffers[turn], []
        for slot, tensor in enumerate(tensors):
            if tensor is None:
                moved.append(None)
                continue
            buffer = buffers.get(slot)
            if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
                buffer = buffers[slot] = torch.empty(tensor.numel(), dtype=tensor.dtype).pin_memory()
            staged = buffer[: tensor.numel()].view(tensor.shape)
            staged.copy_(tensor)
            moved.append(staged.to(device, non_blocking=True))
        self.copied[turn] = torch.cuda.Event()
        self.copied[turn].record()
        return moved


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when present, else CPU. Under torchrun every process needs a GPU of its own."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StageError("device 'cuda' was asked for but torch sees no CUDA device; use device: auto or cpu")
    if device == "cuda" and not distributed.one_gpu_each():
        raise StageError(
            f"{distributed.local_world_size()} processes on this machine but torch sees {torch.cuda.device_count()} "
            "GPU(s): start at most one process per GPU (--nproc) or set device: cpu"
        )
    return torch.device(device)
