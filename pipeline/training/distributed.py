"""Data-parallel training under torchrun: which rank this process is, and the few collectives we need.

torchrun (torch.distributed.run) starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables set. Without them this process is rank 0 of 1 and every function here is a no-op,
so single-process runs take exactly the code path they always took.

Rank 0 is the leader: it holds the store's locks, runs the stages that do not train, and is the only
rank that publishes. Every rank runs the training stages (their `fit` is data-parallel); a rank that
dies closes its connections, which makes the others' next collective fail, so nothing is published.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import EdgeforgeError

# Ranks wait in a collective while the leader runs a stage alone (decoding a dataset, waiting for another
# run's lock); gloo's default of 30 minutes is too short for that. A dead peer still fails them at once.
TIMEOUT = datetime.timedelta(hours=6)


class LaunchFailed(EdgeforgeError):
    """A rank of an `--nproc` launch exited with an error (its own message is printed above)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_leader() -> bool:
    return rank() == 0


_ALONE = False  # set by `alone()`: training in this process only, even inside a process group


def active() -> bool:
    """True in a process group of more than one rank (and not inside `alone()`)."""
    return not _ALONE and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Train in this process alone, on all the data, even under torchrun: the runner runs every stage that does
    not train data-parallel (TRAINS = False) this way, on the leader, which the other ranks do not join."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def share() -> tuple[int, int]:
    """(this rank, number of ranks) of the process group; (0, 1) in a single process."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def one_gpu_each() -> bool:
    """Whether every process on this machine can have a GPU of its own (NCCL cannot share one)."""
    return torch.cuda.is_available() and local_world_size() <= torch.cuda.device_count()


def init() -> None:
    """Join the process group when torchrun started this process with more than one rank."""
    if world_size() == 1 or dist.is_initialized():
        return
    # Decided from what every process on this machine sees alike, so all of them pick the same backend.
    if one_gpu_each():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
        backend = "cpu:gloo,cuda:nccl"  # NCCL for gradients on GPUs, gloo for our small CPU collectives
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_bytes(data: bytes | None) -> bytes | None:
    """The leader's bytes (or None) on every rank."""
    if not active():
        return data
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    if size.item() <= 0:
        return None if size.item() < 0 else b""
    buffer = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if is_leader()
        else torch.empty(size.item(), dtype=torch.uint8)
    )
    dist.broadcast(buffer, src=0)
    return buffer.numpy().tobytes()


def broadcast_json(value: Any) -> Any:
    """The leader's JSON-serialisable value on every rank (a decision only the leader may take)."""
    data = broadcast_bytes(json.dumps(value).encode() if is_leader() else b"")
    return json.loads(data)


def broadcast_state(state: dict | None) -> dict | None:
    """The leader's checkpoint state on every rank, loaded with weights_only (tensors and plain data only)."""
    if not active():
        return state
    data = None
    if is_leader() and state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    data = broadcast_bytes(data)
    return None if data is None else torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (metrics of an epoch); `values` itself on a single process."""
    if active():
        values = values.detach().to("cpu", torch.float64)
        dist.all_reduce(values)
    return values


def launch(nproc: int, args: list[str]) -> None:
    """Run `edgeforge ARGS` as `nproc` ranks on this machine through torchrun (its standalone rendezvous)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    cores = os.cpu_count() or 1
    # torchrun would set 1 thread per rank with a warning; share the cores between the ranks instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    # "--": our options are ours, not torchrun's (argparse would match --nproc to its --nproc-per-node)
    command = ["--standalone", f"--nproc-per-node={nproc}", "--module", "pipeline.cli", "--", *args]
    try:
        run(parse_args(command))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()  # the others were stopped because of it
        raise LaunchFailed(
            f"rank {rank} of {nproc} failed first (exit code {failure.exitcode}) and the launch stopped; its error is "
            "printed above",
            exit_code=failure.exitcode if failure.exitcode > 0 else 1,
        ) from None
