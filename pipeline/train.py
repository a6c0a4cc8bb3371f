"""Training loop shared by the teacher, distill and prune stages.

Images stay uint8 in memory; each batch is augmented (random shift, optional flip) and normalized
on the fly. With a teacher, its logits are computed on the same augmented batch, so a student never
learns from logits of an image it did not see.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

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


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 NCHW pixels to the float input every model (and every ONNX export) expects."""
    x = images.float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


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
        return {"total": ce, "ce": ce, "kd": torch.zeros((), dtype=ce.dtype)}
    t = temperature
    kd = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)  # T^2 keeps the soft-target gradients on the scale of the hard-label ones
    return {"total": (1.0 - alpha) * ce + alpha * kd, "ce": ce, "kd": kd}


def augment(images: torch.Tensor, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `shift` pixels per image, and optional horizontal flips."""
    n, _, h, w = images.shape
    if shift > 0:
        padded = F.pad(images, (shift, shift, shift, shift)).permute(0, 2, 3, 1)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        images = padded[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    return images


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: tuple[list[float], list[float]],
    recipe: Recipe,
    teacher: nn.Module | None = None,
    stage: str = "train",
) -> list[dict[str, float]]:
    """Train `model` in place on uint8 `images`; return one dict of metrics per epoch."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.to(memory_format=torch.channels_last).train()  # measured 1.2-2.7x faster on CPU
    if teacher is not None:
        teacher.to(memory_format=torch.channels_last).eval()
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, epochs=max(recipe.epochs, 1), steps_per_epoch=steps_per_epoch
    )
    history = []
    for epoch in range(1, recipe.epochs + 1):
        started = time.perf_counter()
        sums = {"total": 0.0, "ce": 0.0, "kd": 0.0, "correct": 0.0}
        order = torch.randperm(len(images), generator=generator)
        for step, start in enumerate(range(0, len(images), recipe.batch_size), 1):
            index = order[start : start + recipe.batch_size]
            pixels = augment(images[index].float(), recipe.shift, recipe.flip, generator)
            x = normalize(pixels, *norm).contiguous(memory_format=torch.channels_last)
            y = labels[index]
            logits = model(x)
            with torch.no_grad():
                teacher_logits = teacher(x) if teacher is not None and recipe.alpha > 0 else None
            losses = kd_loss(logits, teacher_logits, y, recipe.temperature, recipe.alpha, recipe.label_smoothing)
            if not torch.isfinite(losses["total"]):
                lr = schedule.get_last_lr()[0]
                raise StageError(
                    f"{stage}: loss became {losses['total'].item()} at epoch {epoch} step {step} (lr {lr:.4g}); "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            schedule.step()
            for name in ("total", "ce", "kd"):
                sums[name] += losses[name].item() * len(index)
            sums["correct"] += (logits.argmax(1) == y).sum().item()
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "loss": sums["total"] / len(images),
            "ce": sums["ce"] / len(images),
            "kd": sums["kd"] / len(images),
            "train_accuracy": sums["correct"] / len(images),
            "seconds": seconds,
            "images_per_s": len(images) / seconds,
        }
        history.append(row)
        log.debug(
            "%s: epoch %d/%d loss %.4f (ce %.4f, kd %.4f) train acc %.4f, %.0f img/s",
            stage,
            epoch,
            recipe.epochs,
            row["loss"],
            row["ce"],
            row["kd"],
            row["train_accuracy"],
            row["images_per_s"],
        )
    model.to(memory_format=torch.contiguous_format).eval()
    return history


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
