"""Training loop shared by the teacher, distill and prune stages.

Images stay uint8 in memory; each batch is augmented (random shift, optional flip) and normalized
on the fly. With a teacher, its logits are computed on the same augmented batch, so a student never
learns from logits of an image it did not see.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import distributed
from pipeline.cache import sha256_file
from pipeline.errors import StageError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float  # peak learning rate of the one-cycle schedule
    weight_decay: float
    label_smoothing: float
    seed: int
    shift: int  # random translation in pixels (zero padding)
    flip: bool  # random horizontal flips (off for digits: a flipped 2 is not a 2)
    temperature: float = 1.0  # distillation temperature T
    alpha: float = 0.0  # weight of the distillation term; 0 trains on labels only
    schedule: str = "onecycle"  # learning-rate schedule per step: onecycle or cosine
    device: str = "cpu"  # auto, cpu or cuda


def normalize(
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 NCHW pixels to the float input every model (and every ONNX export) expects.

    (pixel / 255 - mean) / std, computed as pixel * scale + shift in one pass, written straight
    into the requested memory layout.
    """
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
    return torch.addcmul(shift, images, scale, out=out)


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """normalize()'s scale and shift, made once per device: a CUDA tensor built from host values every batch
    would make the CPU wait for the GPU each time."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Hinton et al. 2015: (1-a)*CE(student, labels) + a*T^2*KL(softmax(teacher/T) || softmax(student/T))."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha == 0.0:
        return {"total": ce, "ce": ce, "kd": torch.zeros((), dtype=ce.dtype, device=ce.device)}
    t = temperature
    kd = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)  # T^2 keeps the soft-target gradients on the scale of the hard-label ones
    return {"total": (1.0 - alpha) * ce + alpha * kd, "ce": ce, "kd": kd}


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The random draws of one batch: a shift per image and which images are flipped."""

    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flipped: torch.Tensor | None

    @staticmethod
    def draw(n: int, shift: int, flip: bool, generator: torch.Generator) -> Augmentation:
        """Drawn on the CPU from the seeded generator: the same draws on every device and every rank."""
        dy = dx = flipped = None
        if shift > 0:
            dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        if flip:
            flipped = torch.rand(n, generator=generator) < 0.5
        return Augmentation(dy, dx, flipped)

    def select(self, rows: slice) -> Augmentation:
        """The draws of the images at `rows` of the batch (one rank's share)."""
        return Augmentation(*(None if draw is None else draw[rows] for draw in (self.dy, self.dx, self.flipped)))


def augment(images: torch.Tensor, shift: int, draws: Augmentation) -> torch.Tensor:
    """The drawn translation by up to `shift` pixels per image (zero padding) and horizontal flips."""
    n, _, h, w = images.shape
    device = images.device
    if draws.dy is not None:
        padded = F.pad(images, (shift, shift, shift, shift)).permute(0, 2, 3, 1)
        rows = (draws.dy.to(device)[:, None] + torch.arange(h, device=device))[:, :, None]
        cols = (draws.dx.to(device)[:, None] + torch.arange(w, device=device))[:, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if draws.flipped is not None:
        images = torch.where(draws.flipped.to(device).view(-1, 1, 1, 1), images.flip(3), images)
    return images


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


def _optimizer_and_schedule(model: nn.Module, recipe: Recipe, steps_per_epoch: int):
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )
    total_steps = max(recipe.epochs, 1) * steps_per_epoch
    if recipe.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total_steps)
    return optimizer, schedule


def _save_checkpoint(path: Path, state: dict) -> None:
    """Written to a temp file, hashed, then renamed: a kill mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".partial")
    torch.save(state, temp)
    digest = sha256_file(temp)
    os.replace(temp, path)
    path.with_suffix(".sha256").write_text(digest)


def _load_checkpoint(path: Path) -> dict | None:
    """Our own checkpoint, only if its hash matches what we recorded (never an unverified pickle)."""
    digest_file = path.with_suffix(".sha256")
    if not path.is_file() or not digest_file.is_file() or sha256_file(path) != digest_file.read_text().strip():
        return None
    return torch.load(path, weights_only=True, map_location="cpu")


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: tuple[list[float], list[float]],
    recipe: Recipe,
    teacher: nn.Module | None = None,
    stage: str = "train",
    checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place on uint8 `images`; return one dict of metrics per epoch.

    With `checkpoint`, the state is saved after every epoch and a run with the same recipe resumes
    from it: the result is the same as an uninterrupted run.

    Under torchrun the model trains data-parallel: every rank draws the same shuffled order and the
    same augmentation, takes its strided share of each global batch, and DDP averages the gradients.
    `batch_size` stays the global batch and `lr` its learning rate for any number of ranks, so no
    scaling rule applies. BatchNorm normalizes each rank's share with its own statistics; the running
    statistics kept for inference are rank 0's (DDP broadcasts them every step).
    """
    device = resolve_device(recipe.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN picks its fastest kernels once
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.to(device=device, memory_format=torch.channels_last).train()  # measured 1.2-2.7x faster on CPU
    if teacher is not None:
        teacher.to(device=device, memory_format=torch.channels_last).eval()
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    optimizer, schedule = _optimizer_and_schedule(model, recipe, steps_per_epoch)
    history: list[dict[str, float]] = []
    # Only the leader keeps checkpoints; it hands its verified state to the other ranks.
    state = _load_checkpoint(checkpoint) if checkpoint and distributed.is_leader() else None
    state = distributed.broadcast_state(state)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history = state["history"]
        log.info("%s: resuming after epoch %d from its checkpoint", stage, len(history))
    trained = model
    if distributed.active():
        device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    staging = PinnedStaging() if device.type == "cuda" else None
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        loop = _Loop(trained, teacher, images, labels, norm, recipe, optimizer, schedule, generator, device, stage)
        row = _train_epoch(loop, epoch, staging)
        history.append({"epoch": epoch, **row})
        log.log(
            logging.DEBUG if sys.stderr.isatty() else logging.INFO,
            "%s: epoch %d/%d loss %.4f (ce %.4f, kd %.4f) train acc %.4f, %.0f img/s, lr %.4g",
            stage,
            epoch,
            recipe.epochs,
            row["loss"],
            row["ce"],
            row["kd"],
            row["train_accuracy"],
            row["images_per_s"],
            row["lr"],
        )
        if checkpoint and distributed.is_leader():
            _save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                },
            )
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to(device="cpu", memory_format=torch.contiguous_format)
    return history


@dataclasses.dataclass
class _Loop:
    """What one training epoch works with."""

    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    teacher: nn.Module | None
    images: torch.Tensor
    labels: torch.Tensor
    norm: tuple[list[float], list[float]]
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    device: torch.device
    stage: str


def rank_share(rank: int, ranks: int) -> slice:
    """This rank's rows of a global batch: strided, so the ranks' shares are disjoint and cover the batch."""
    return slice(rank, None, ranks)


def _train_epoch(loop: _Loop, epoch: int, staging: PinnedStaging | None) -> dict[str, float]:
    """One pass over the shuffled training set (this rank's share of it); metrics of the whole epoch."""
    model, teacher, images, labels, norm, recipe = (
        loop.model,
        loop.teacher,
        loop.images,
        loop.labels,
        loop.norm,
        loop.recipe,
    )
    optimizer, schedule, generator, device, stage = (
        loop.optimizer,
        loop.schedule,
        loop.generator,
        loop.device,
        loop.stage,
    )
    rank, ranks = distributed.share()
    title = f"{stage} epoch {epoch}/{recipe.epochs}"
    started = time.perf_counter()
    # loss, ce, kd (each times images), correct: summed on the device, read once per epoch
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    seen = 0  # images this rank trained on
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    # Reading a CUDA value waits for the GPU; check for a diverged loss every step only on the CPU.
    check_every = 1 if device.type == "cpu" else 25
    order = torch.randperm(len(images), generator=generator)
    batches = range(0, len(images), recipe.batch_size)
    show = sys.stderr.isatty() and distributed.is_leader()
    progress = tqdm(batches, desc=title, unit="batch", leave=False, disable=not show)
    use_bf16 = device.type == "cuda"  # bf16 autocast: tensor-core speed without loss scaling
    for step, start in enumerate(progress, 1):
        index = order[start : start + recipe.batch_size]
        if len(index) < ranks:
            break  # a last batch too small to give every rank an image (fewer images than ranks)
        draws = Augmentation.draw(len(index), recipe.shift, recipe.flip, generator)
        share = rank_share(rank, ranks)
        index, draws = index[share], draws.select(share)
        pixels, y = images[index], labels[index]
        if staging is not None:
            pixels, y, *drawn = staging.to_device([pixels, y, draws.dy, draws.dx, draws.flipped], device)
            draws = Augmentation(*drawn)
        pixels = augment(pixels, recipe.shift, draws)  # on uint8, on the device: 4x less to move than floats
        x = normalize(pixels, *norm, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
            with torch.no_grad():
                teacher_logits = teacher(x) if teacher is not None and recipe.alpha > 0 else None
        losses = kd_loss(
            logits.float(),
            None if teacher_logits is None else teacher_logits.float(),
            y,
            recipe.temperature,
            recipe.alpha,
            recipe.label_smoothing,
        )
        nonfinite |= ~torch.isfinite(losses["total"])
        if (step % check_every == 0 or start + recipe.batch_size >= len(images)) and nonfinite.item():
            where = f"step {step}" if check_every == 1 else f"one of steps {step - check_every + 1}-{step}"
            raise StageError(
                f"{stage}: loss became {losses['total'].item()} at epoch {epoch} {where} "
                f"(lr {schedule.get_last_lr()[0]:.4g}); lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        lr = schedule.get_last_lr()[0]
        schedule.step()
        count = len(index)
        seen += count
        correct = (logits.argmax(1) == y).sum()
        step_sums = [losses["total"].detach() * count, losses["ce"].detach() * count, losses["kd"].detach() * count]
        sums += torch.stack([*step_sums, correct]).to(torch.float64)
        if show and step % 10 == 0:
            progress.set_postfix(
                loss=f"{losses['total'].item():.3f}",
                acc=f"{sums[3].item() / seen:.3f}",
                img_s=f"{seen * ranks / (time.perf_counter() - started):.0f}",
            )
    totals = torch.cat([sums.cpu(), torch.tensor([seen], dtype=torch.float64)])
    total, ce, kd, correct, n = distributed.all_sum(totals).tolist()
    seconds = time.perf_counter() - started
    return {
        "loss": total / n,
        "ce": ce / n,
        "kd": kd / n,
        "train_accuracy": correct / n,
        "images": int(n),  # summed over ranks: the whole training set, once
        "seconds": seconds,
        "images_per_s": n / seconds,
        "lr": lr,
    }


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, norm: tuple[list[float], list[float]], batch: int = 512
) -> torch.Tensor:
    """Logits for uint8 `images`, in eval mode."""
    model.eval()
    return torch.cat([model(normalize(images[i : i + batch], *norm)) for i in range(0, len(images), batch)])


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: tuple[list[float], list[float]]
) -> float:
    return (predict(model, images, norm).argmax(1) == labels).float().mean().item()
