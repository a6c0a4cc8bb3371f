"""Training objectives: cross-entropy on the labels plus the teacher's temperature-softened logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
