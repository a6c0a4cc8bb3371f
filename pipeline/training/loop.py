"""Training loop shared by the teacher, distill and prune stages.

Images stay uint8 (in memory or memory-mapped: only each batch's rows are read); each batch is augmented and
normalized on the fly. With a teacher, its logits are computed on the same augmented batch, so a student never
learns from logits of an image it did not see.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.errors import StageError
from pipeline.training import checkpoints, distributed
from pipeline.training.augment import Augmentation, augment, normalize
from pipeline.training.batches import Images, pixel_rows
from pipeline.training.devices import PinnedStaging, resolve_device
from pipeline.training.features import FeatureDistillation, Trainee
from pipeline.training.losses import kd_loss

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
    augment: str = "shift"  # shift (by `shift` pixels) or resized_crop (RandomResizedCrop); see augment.py
    temperature: float = 1.0  # distillation temperature T
    alpha: float = 0.0  # weight of the distillation term; 0 trains on labels only
    schedule: str = "onecycle"  # learning-rate schedule per step: onecycle or cosine
    device: str = "cpu"  # auto, cpu or cuda


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


def fit(
    model: nn.Module,
    images: Images,
    labels: np.ndarray | torch.Tensor,
    norm: tuple[list[float], list[float]],
    recipe: Recipe,
    teacher: nn.Module | None = None,
    stage: str = "train",
    checkpoint: Path | None = None,
    features: FeatureDistillation | None = None,
    validation: tuple[Images, np.ndarray | torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place on uint8 `images`; return one dict of metrics per epoch.

    With `checkpoint`, the state is saved after every epoch and a run with the same recipe resumes
    from it: the result is the same as an uninterrupted run. With `features` (and a teacher), the feature
    distillation loss is added to the objective and its adapters train with the model. With `validation` (uint8
    images and labels), each epoch's row also has the model's accuracy on them.

    Under torchrun the model trains data-parallel: every rank draws the same shuffled order and the
    same augmentation, takes its strided share of each global batch, and DDP averages the gradients.
    `batch_size` stays the global batch and `lr` its learning rate for any number of ranks, so no
    scaling rule applies. BatchNorm normalizes each rank's share with its own statistics; the running
    statistics kept for inference are rank 0's (DDP broadcasts them every step).
    """
    device, labels = resolve_device(recipe.device), torch.as_tensor(labels)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN picks its fastest kernels once
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    # What the optimizer updates: the model, and with feature distillation its adapters beside it.
    trainee = model if features is None else Trainee(model, features)
    trainee.to(device=device, memory_format=torch.channels_last).train()  # measured 1.2-2.7x faster on CPU
    if teacher is not None:
        teacher.to(device=device, memory_format=torch.channels_last).eval()
    optimizer, schedule = _optimizer_and_schedule(trainee, recipe, math.ceil(len(images) / recipe.batch_size))
    history = checkpoints.resume(checkpoint, trainee, optimizer, schedule, generator, stage)
    trained = trainee
    if distributed.active():
        device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(trainee, device_ids=device_ids)
    loop = _Loop(trained, teacher, images, labels, norm, recipe, optimizer, schedule, generator, device, stage)
    if features is not None:
        features.attach(teacher, model)
    try:
        for epoch in range(len(history) + 1, recipe.epochs + 1):
            history.append({"epoch": epoch, **_train_epoch(loop, epoch, features is not None)})
            if validation is not None:
                history[-1]["validation_accuracy"] = accuracy(model, *validation, norm)
                model.train()
            _log_epoch(stage, epoch, recipe.epochs, history[-1])
            if checkpoint and distributed.is_leader():
                state = {"model": trainee.state_dict(), "optimizer": optimizer.state_dict()}
                state |= {"schedule": schedule.state_dict(), "generator": generator.get_state(), "history": history}
                checkpoints.save(checkpoint, state)
    finally:
        if features is not None:
            features.detach()  # the model is saved and exported next: nothing may capture its layers then
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to(device="cpu", memory_format=torch.contiguous_format)
    return history


def _log_epoch(stage: str, epoch: int, epochs: int, row: dict[str, float]) -> None:
    feature = f", feature {row['feature']:.4f}" if row["feature"] else ""
    validation = f", validation acc {row['validation_accuracy']:.4f}" if "validation_accuracy" in row else ""
    log.log(
        logging.DEBUG if sys.stderr.isatty() else logging.INFO,
        "%s: epoch %d/%d loss %.4f (ce %.4f, kd %.4f%s) train acc %.4f%s, %.0f img/s, lr %.4g",
        stage,
        epoch,
        epochs,
        row["loss"],
        row["ce"],
        row["kd"],
        feature,
        row["train_accuracy"],
        validation,
        row["images_per_s"],
        row["lr"],
    )


@dataclasses.dataclass
class _Loop:
    """What one training epoch works with."""

    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    teacher: nn.Module | None
    images: Images
    labels: torch.Tensor
    norm: tuple[list[float], list[float]]
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    device: torch.device
    stage: str
    staging: PinnedStaging | None = None  # on a GPU: the page-locked buffers batches are copied through

    def __post_init__(self):
        if self.device.type == "cuda":
            self.staging = PinnedStaging()


def rank_share(rank: int, ranks: int) -> slice:
    """This rank's rows of a global batch: strided, so the ranks' shares are disjoint and cover the batch."""
    return slice(rank, None, ranks)


class _EpochSums:
    """loss, ce, kd, feature (each times images) and correct predictions, summed on the device and read once per
    epoch; and whether a loss was not finite, read every step on the CPU (every 25 on a GPU: reading waits for it)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.seen = 0  # images this rank trained on
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.check_every = 1 if device.type == "cpu" else 25

    def add(self, losses: dict[str, torch.Tensor], logits: torch.Tensor, y: torch.Tensor) -> None:
        count = len(y)
        self.seen += count
        correct = (logits.argmax(1) == y).sum()
        terms = [losses[name].detach() * count for name in ("total", "ce", "kd", "feature")]
        self.sums += torch.stack([*terms, correct]).to(torch.float64)

    def check_finite(self, loop: _Loop, losses: dict[str, torch.Tensor], epoch: int, step: int, last: bool) -> None:
        self.nonfinite |= ~torch.isfinite(losses["total"])
        if (step % self.check_every == 0 or last) and self.nonfinite.item():
            first = step - self.check_every + 1
            where = f"step {step}" if self.check_every == 1 else f"one of steps {first}-{step}"
            raise StageError(
                f"{loop.stage}: loss became {losses['total'].item()} at epoch {epoch} {where} "
                f"(lr {loop.schedule.get_last_lr()[0]:.4g}); lower the learning rate"
            )

    def totals(self) -> list[float]:
        """loss, ce, kd, feature, correct and images, summed over ranks."""
        totals = torch.cat([self.sums.cpu(), torch.tensor([self.seen], dtype=torch.float64)])
        return distributed.all_sum(totals).tolist()


def _train_epoch(loop: _Loop, epoch: int, with_features: bool) -> dict[str, float]:
    """One pass over the shuffled training set (this rank's share of it); metrics of the whole epoch."""
    recipe = loop.recipe
    rank, ranks = distributed.share()
    started = time.perf_counter()
    sums = _EpochSums(loop.device)
    order = torch.randperm(len(loop.images), generator=loop.generator)
    show = sys.stderr.isatty() and distributed.is_leader()
    batches = range(0, len(loop.images), recipe.batch_size)
    title = f"{loop.stage} epoch {epoch}/{recipe.epochs}"
    progress = tqdm(batches, desc=title, unit="batch", leave=False, disable=not show)
    lr = loop.schedule.get_last_lr()[0]
    for step, start in enumerate(progress, 1):
        index = order[start : start + recipe.batch_size]
        if len(index) < ranks:
            break  # a last batch too small to give every rank an image (fewer images than ranks)
        x, y = _batch(loop, index, rank_share(rank, ranks))
        logits, losses = _losses(loop, x, y, with_features)
        sums.check_finite(loop, losses, epoch, step, last=start + recipe.batch_size >= len(loop.images))
        loop.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        loop.optimizer.step()
        lr = loop.schedule.get_last_lr()[0]
        loop.schedule.step()
        sums.add(losses, logits, y)
        if show and step % 10 == 0:
            images_per_s = sums.seen * ranks / (time.perf_counter() - started)
            loss, train_accuracy = losses["total"].item(), sums.sums[4].item() / sums.seen
            progress.set_postfix(loss=f"{loss:.3f}", acc=f"{train_accuracy:.3f}", img_s=f"{images_per_s:.0f}")
    total, ce, kd, feature, correct, n = sums.totals()
    seconds = time.perf_counter() - started
    return {
        "loss": total / n,
        "ce": ce / n,
        "kd": kd / n,
        "feature": feature / n,
        "train_accuracy": correct / n,
        "images": int(n),  # summed over ranks: the whole training set, once
        "seconds": seconds,
        "images_per_s": n / seconds,
        "lr": lr,
    }


def _batch(loop: _Loop, index: torch.Tensor, share: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of one global batch, augmented and normalized on the training device."""
    recipe = loop.recipe
    crop_of = tuple(loop.images.shape[2:]) if recipe.augment == "resized_crop" else None
    draws = Augmentation.draw(len(index), recipe.shift, recipe.flip, loop.generator, crop_of)
    index, draws = index[share], draws.select(share)
    pixels, y = pixel_rows(loop.images, index), loop.labels[index]
    if loop.staging is not None:
        drawn = [draws.dy, draws.dx, draws.flipped, draws.boxes]
        pixels, y, *drawn = loop.staging.to_device([pixels, y, *drawn], loop.device)
        draws = Augmentation(*drawn)
    pixels = augment(pixels, recipe.shift, draws)  # on uint8, on the device: 4x less to move than floats
    return normalize(pixels, *loop.norm, memory_format=torch.channels_last), y


def _losses(
    loop: _Loop, x: torch.Tensor, y: torch.Tensor, with_features: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The student's logits and its objective on one batch (the teacher sees the same augmented images)."""
    recipe = loop.recipe
    use_bf16 = loop.device.type == "cuda"  # bf16 autocast: tensor-core speed without loss scaling
    with torch.autocast(loop.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        if with_features:  # the teacher's maps first: the student's forward computes the feature loss against them
            with torch.no_grad():
                teacher_logits = loop.teacher(x)
            logits, feature_loss = loop.model(x)
        else:
            logits, feature_loss = loop.model(x), None
            with torch.no_grad():
                teacher_logits = loop.teacher(x) if loop.teacher is not None and recipe.alpha > 0 else None
    teacher_logits = None if teacher_logits is None else teacher_logits.float()
    losses = kd_loss(logits.float(), teacher_logits, y, recipe.temperature, recipe.alpha, recipe.label_smoothing)
    if feature_loss is None:
        return logits, {**losses, "feature": torch.zeros_like(losses["ce"])}
    return logits, {**losses, "total": losses["total"] + feature_loss.float(), "feature": feature_loss.float()}


@torch.no_grad()
def predict(model: nn.Module, images: Images, norm: tuple[list[float], list[float]], batch: int = 512) -> torch.Tensor:
    """Logits for uint8 `images` (never augmented), in eval mode, on the device the model is on (returned on the
    CPU); a memory-mapped array is read `batch` images at a time."""
    model.eval()
    device = next(model.parameters()).device
    rows = (pixel_rows(images, slice(i, i + batch)) for i in range(0, len(images), batch))
    return torch.cat([model(normalize(pixels.to(device), *norm)).cpu() for pixels in rows])


def accuracy(model: nn.Module, images: Images, labels: np.ndarray | torch.Tensor, norm: tuple) -> float:
    return (predict(model, images, norm).argmax(1) == torch.as_tensor(labels)).float().mean().item()
