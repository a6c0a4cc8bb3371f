"""How sure an accuracy is: 95% intervals for one model's accuracy and for the difference between two models
measured on the same images.

- One accuracy: the Wilson score interval (Wilson 1927), which stays inside [0, 1] and keeps close to its nominal
  coverage for accuracies near 1 and for small sets, where the plain normal (Wald) interval does not.
- Two models on the same images: the difference of paired proportions, d = (b - c) / n, where b counts the images
  only the first model gets right and c those only the second gets right (the images both get right or both get
  wrong say nothing about the difference). Its Wald interval d +- z * sqrt(b + c - (b - c)^2 / n) / n (Agresti,
  Categorical Data Analysis, 10.1) uses the pairing: two models that agree on most images are compared far more
  precisely than two independent accuracies would be.

Per-image correctness travels as packed bits (`pack`/`unpack`), so a report carries what the intervals of any
pair need, and `edgeforge signoff` can recompute every choice from the report alone.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95%


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `correct / total`; (0, 1) when there is nothing to count."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 or `total` correct the bound is exactly 0 or 1 (rounding would leave it a hair inside).
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def paired_difference(first: np.ndarray, second: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(d, low, high): accuracy of `first` minus accuracy of `second` on the same images, with its 95% interval.

    `first` and `second` are per-image correctness (booleans) in the same image order."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"paired correctness of different lengths: {first.shape} and {second.shape}")
    n = first.size
    if n == 0:
        return 0.0, -1.0, 1.0
    only_first = int(np.count_nonzero(first & ~second))
    only_second = int(np.count_nonzero(second & ~first))
    d = (only_first - only_second) / n
    half = z * math.sqrt(max(only_first + only_second - (only_first - only_second) ** 2 / n, 0.0)) / n
    return d, d - half, d + half


def pack(correct: np.ndarray) -> str:
    """Per-image correctness as base64 of packed bits (a 10,000-image test split is 1,668 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack(packed: str, count: int) -> np.ndarray:
    """The `count` booleans `pack` stored."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
    if bits.size < count or bits.size - count >= 8:
        raise ValueError(f"packed correctness holds {bits.size} bits, not the {count} images expected")
    return bits[:count].astype(bool)


def accuracy_with_interval(correct: np.ndarray) -> dict[str, object]:
    """{"accuracy", "interval": [low, high], "images", "correct": packed bits} of per-image correctness."""
    correct = np.asarray(correct, dtype=bool)
    hits = int(np.count_nonzero(correct))
    accuracy = hits / correct.size if correct.size else 0.0
    return {
        "accuracy": accuracy,
        "interval": list(wilson(hits, correct.size)),
        "images": int(correct.size),
        "correct": pack(correct),
    }


def test_and_validation(test_correct: np.ndarray, validation_correct: np.ndarray) -> dict[str, Any]:
    """Test and validation accuracy, each with its 95% Wilson interval and per-image correctness (packed)."""
    test, validation = accuracy_with_interval(test_correct), accuracy_with_interval(validation_correct)
    return {
        "accuracy": test["accuracy"],
        "accuracy_interval": test["interval"],
        "test_correct": test["correct"],
        "test_images": test["images"],
        "validation_accuracy": validation["accuracy"],
        "validation_interval": validation["interval"],
        "validation_correct": validation["correct"],
        "validation_images": validation["images"],
    }


def accuracies_with_intervals(
    validation: float | None, test: float | None, sizes: dict[str, Any]
) -> dict[str, Any] | None:
    """Validation and test accuracy, each with its 95% Wilson interval (None when the model was not trained)."""
    if validation is None:
        return None
    intervals = {}
    for split, value, count in (
        ("validation", validation, sizes["validation_size"]),
        ("test", test, sizes["test_size"]),
    ):
        intervals[f"{split}_accuracy"] = value
        intervals[f"{split}_interval"] = list(wilson(round(value * count), count))
    return intervals


def accuracy_text(value: float, interval: list[float] | None) -> str:
    """An accuracy with its 95% interval: 0.9471 [0.9203, 0.9661]."""
    return f"{value:.4f}" if not interval else f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def both_splits_text(scores: dict[str, Any] | None) -> str:
    """'validation 0.7974 [0.7860, 0.8083], test 0.7800 [...]' of accuracies_with_intervals' dict; 'not trained'."""
    if scores is None:
        return "not trained"
    return (
        f"validation {accuracy_text(scores['validation_accuracy'], scores['validation_interval'])}, "
        f"test {accuracy_text(scores['test_accuracy'], scores['test_interval'])}"
    )
