"""What the training stages share: range checks of their params, and turning params into a Recipe and a
ModelSpec."""

from __future__ import annotations

from typing import Any

from pipeline.datasets.artifact import Dataset
from pipeline.errors import require
from pipeline.models.factory import published_width
from pipeline.models.spec import ModelSpec
from pipeline.training.augment import AUGMENTATIONS
from pipeline.training.loop import Recipe, accuracy


def resolve_width(params: Any) -> None:
    """A width the config left unset (None) becomes the published width of `params.model` (in place: called from
    a frozen params dataclass's __post_init__, so the stored params and cache keys hold the resolved number)."""
    if params.width is None:
        object.__setattr__(params, "width", published_width(params.model))


def model_label(model: str, width: int | None) -> str:
    """How a stage line names the model it built: 'resnet20 x16', or the user's builder as written."""
    return model if width is None else f"{model} x{width}"


def check_training_params(section: str, params: Any) -> None:
    """Range checks of the stages that train a model from scratch."""
    require(params.width is None or params.width >= 1, f"{section}.width", params.width, "null or an integer >= 1")
    require(params.epochs >= 1, f"{section}.epochs", params.epochs, "an integer >= 1")
    check_recipe_params(section, params)


def check_recipe_params(section: str, params: Any) -> None:
    """Range checks shared by every stage that trains (teacher, distill, prune's fine-tune)."""
    require(params.batch_size >= 1, f"{section}.batch_size", params.batch_size, "an integer >= 1")
    require(params.lr > 0, f"{section}.lr", params.lr, "a number > 0")
    require(params.weight_decay >= 0, f"{section}.weight_decay", params.weight_decay, "a number >= 0")
    require(0 <= params.label_smoothing < 1, f"{section}.label_smoothing", params.label_smoothing, "a number in [0, 1)")
    require(params.shift >= 0, f"{section}.shift", params.shift, "an integer >= 0")
    require(params.augment in AUGMENTATIONS, f"{section}.augment", params.augment, " or ".join(AUGMENTATIONS))
    require(params.schedule in ("onecycle", "cosine"), f"{section}.schedule", params.schedule, "onecycle or cosine")
    require(params.device in ("auto", "cpu", "cuda"), f"{section}.device", params.device, "auto, cpu or cuda")


def spec_for(dataset: Dataset, model: str, width: int) -> ModelSpec:
    _, channels, height, width_px = dataset.train_images.shape
    return ModelSpec(model, width, channels, len(dataset.class_names), (height, width_px))


def recipe_for(params: Any, epochs: int, temperature: float = 1.0, alpha: float = 0.0) -> Recipe:
    return Recipe(
        epochs=epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        weight_decay=params.weight_decay,
        label_smoothing=params.label_smoothing,
        seed=params.seed,
        shift=params.shift,
        flip=params.flip,
        augment=params.augment,
        temperature=temperature,
        alpha=alpha,
        schedule=params.schedule,
        device=params.device,
    )


def scored(model: Any, dataset: Dataset) -> dict[str, float]:
    """The model's accuracy (PyTorch) on the validation split, which choices read, and the test split, reported."""
    return {
        "validation_accuracy": accuracy(model, dataset.val_images, dataset.val_labels, dataset.norm),
        "test_accuracy": accuracy(model, dataset.test_images, dataset.test_labels, dataset.norm),
    }
