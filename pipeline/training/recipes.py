"""What the training stages share: range checks of their params, and turning params into a Recipe and a
ModelSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pipeline.cache import sha256_file
from pipeline.datasets.artifact import Dataset
from pipeline.errors import ConfigError, require
from pipeline.models.factory import classifier_head, model_source_sha256, published_width
from pipeline.models.libraries import library_of, library_version, pretrained_state_dict
from pipeline.models.spec import ModelSpec
from pipeline.models.weights import SUFFIXES, load_checked, read_state_dict
from pipeline.training.augment import AUGMENTATIONS
from pipeline.training.loop import Recipe, accuracy

# Which of a network's two training runs is kept (distill.baseline): with the teacher, or on labels alone
DISTILLED, LABELS_ALONE = "distilled", "labels alone"


def kept_run_name(distilled_validation: float, labels_validation: float) -> str:
    """Which of one network's two runs is kept: the same network, so the same latency, and the more accurate on
    validation wins, the distilled on a tie (a teacher little better than the network can hold it back)."""
    return LABELS_ALONE if labels_validation > distilled_validation else DISTILLED


def resolve_width(params: Any) -> None:
    """A width the config left unset (None) becomes the published width of `params.model` (in place: called from
    a frozen params dataclass's __post_init__, so the stored params and cache keys hold the resolved number)."""
    if params.width is None:
        object.__setattr__(params, "width", published_width(params.model))


def model_label(model: str, width: int | None) -> str:
    """How a stage line names the model it built: 'resnet20 x16', or the user's builder as written."""
    return model if width is None else f"{model} x{width}"


def check_training_params(section: str, params: Any, min_epochs: int = 1) -> None:
    """Range checks of the stages that build and train a model (teacher, distill)."""
    require(params.width is None or params.width >= 1, f"{section}.width", params.width, "null or an integer >= 1")
    if params.width is not None and library_of(params.model) is not None:
        raise ConfigError(
            f"{section}.width={params.width} does not apply to {params.model!r}, which comes in its published width: "
            f"remove it or set it to null"
        )
    require(params.epochs >= min_epochs, f"{section}.epochs", params.epochs, f"an integer >= {min_epochs}")
    check_recipe_params(section, params)
    check_start_params(section, params)


def check_start_params(section: str, params: Any) -> None:
    """The weights a model starts from: a file (`weights`), the library's (`pretrained`), or fresh."""
    if params.weights is not None and Path(params.weights).suffix not in SUFFIXES:
        expected = "a .safetensors file or a state_dict saved as .pt or .pth"
        require(False, f"{section}.weights", params.weights, expected)
    if params.weights is not None and params.pretrained:
        raise ConfigError(f"{section}.weights and {section}.pretrained both say where to start: set only one")
    if params.pretrained and library_of(params.model) is None:
        raise ConfigError(
            f"{section}.pretrained=true needs a torchvision:NAME or timm:NAME model, not {params.model!r}; "
            f"bring your own weights with {section}.weights"
        )
    if params.reinit_head and params.weights is None and not params.pretrained:
        raise ConfigError(f"{section}.reinit_head=true has no weights to apply to: set {section}.weights or pretrained")


def model_inputs(section: str, params: Any) -> dict[str, str]:
    """What a training stage's model is built and started from, outside the config: a user builder's source, the
    library's version (an upgrade can change an architecture or its pretrained weights), the weights file."""
    inputs = {
        "model_source_sha256": model_source_sha256(params.model),
        "model_library": library_version(params.model),
        "weights_sha256": None if params.weights is None else weights_sha256(section, params.weights),
    }
    return {key: value for key, value in inputs.items() if value is not None}


def weights_sha256(section: str, weights: str) -> str:
    if not Path(weights).is_file():
        raise ConfigError(f"{section}.weights={weights!r}: no such file; give the path of a .safetensors or .pt file")
    return sha256_file(Path(weights))


def start_from(model: nn.Module, spec: ModelSpec, section: str, params: Any) -> str:
    """Load the weights `model` starts training from (in place): `params.weights`, the library's pretrained
    weights, or none. Says which, for the stage's line."""
    if params.weights is not None:
        where = f"{section}.weights={params.weights!r}"
        state = read_state_dict(f"{section}.weights", Path(params.weights))
    elif params.pretrained:
        where = f"{spec.name}'s pretrained weights"
        state = pretrained_state_dict(f"{section}.pretrained", spec)
    else:
        return "fresh weights"
    head = classifier_head(model, spec.num_classes)
    built = f"{section}.model={spec.name!r}"
    load_checked(model, state, head, where=where, built=built, reinit_head=params.reinit_head)
    return f"from {Path(params.weights).name}" if params.weights is not None else "from pretrained weights"


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
