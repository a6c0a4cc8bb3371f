"""Epoch checkpoints of a training stage: written whole or not at all, trusted only through their recorded hash."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.cache import sha256_file
from pipeline.training import distributed

log = logging.getLogger(__name__)


def save(path: Path, state: dict) -> None:
    """Written to a temp file, hashed, then renamed: a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".partial")
    torch.save(state, temp)
    digest = sha256_file(temp)
    os.replace(temp, path)
    path.with_suffix(".sha256").write_text(digest)


def load(path: Path) -> dict | None:
    """Our own checkpoint, only if its hash matches what we recorded (never an unverified pickle)."""
    digest_file = path.with_suffix(".sha256")
    if not path.is_file() or not digest_file.is_file() or sha256_file(path) != digest_file.read_text().strip():
        return None
    return torch.load(path, weights_only=True, map_location="cpu")


def resume(checkpoint: Path | None, model, optimizer, schedule, generator, stage: str) -> list[dict[str, float]]:
    """Load the verified checkpoint's state into the training objects; the epochs it finished (empty if none).

    Only the leader keeps checkpoints; it hands its verified state to the other ranks."""
    state = load(checkpoint) if checkpoint and distributed.is_leader() else None
    state = distributed.broadcast_state(state)
    if state is None:
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    log.info("%s: resuming after epoch %d from its checkpoint", stage, len(state["history"]))
    return state["history"]
