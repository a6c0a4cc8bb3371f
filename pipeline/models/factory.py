"""Model builders behind one factory: the built-in architectures by name, a library's by 'torchvision:NAME' or
'timm:NAME' (pipeline/models/libraries.py), or the user's own `package.module:function`, imported with importlib and
called as `function(in_channels=..., num_classes=...)`.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch_pruning as tp
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.cifar import MODELS, PUBLISHED_WIDTHS
from pipeline.models.libraries import (
    build_library_model,
    check_library_model,
    library_of,
    torchvision_operators_or_their_schemas,
)
from pipeline.models.spec import ModelSpec

OTHER_NAMES = "'torchvision:NAME', 'timm:NAME' or 'package.module:function'"


def is_user_model(name: str) -> bool:
    """A 'package.module:function' name: the user's own builder rather than a key of MODELS or a library's model."""
    return ":" in name and library_of(name) is None


def import_user_module(key: str, name: str) -> tuple[ModuleType, str]:
    """(module, attribute name) of a user model name, or a one-line ConfigError saying what to fix."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute.isidentifier():
        raise ConfigError(f"{key}={name!r} is not a model name: expected one of {', '.join(MODELS)}, {OTHER_NAMES}")
    try:
        torchvision_operators_or_their_schemas()  # a user's builder often builds on torchvision or timm
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing; say how, in one line
        reason = (str(error) if isinstance(error, ImportError) else f"{type(error).__name__}: {error}").splitlines()
        raise ConfigError(
            f"{key}={name!r}: cannot import module {module_name!r} ({reason[0] if reason else type(error).__name__}); "
            "make it importable (pip install -e . or PYTHONPATH)"
        ) from error
    return module, attribute


def user_builder(key: str, name: str) -> Callable[..., nn.Module]:
    """The callable a user model name points at, or a one-line ConfigError."""
    module, attribute = import_user_module(key, name)
    builder = getattr(module, attribute, None)
    if not callable(builder):
        raise ConfigError(f"{key}={name!r}: module {module.__name__!r} has no callable {attribute!r}")
    return builder


def check_model_name(key: str, name: str) -> None:
    if library_of(name) is not None:
        check_library_model(key, name)
    elif is_user_model(name):
        user_builder(key, name)
    elif name not in MODELS:
        raise ConfigError(f"{key}={name!r} is not a known model; available: {', '.join(MODELS)}, {OTHER_NAMES}")


def published_width(name: str) -> int | None:
    """The width of the published network `name`: what `width` is unless a config sets it. None for a user's
    own builder or a library's model, which take no width (a library's models come in their published widths)."""
    return None if ":" in name else PUBLISHED_WIDTHS.get(name)


def model_source_sha256(name: str) -> str | None:
    """sha256 of a user model's module file, so editing the model changes the cache key; None for built-in models.

    Only the named module's own file is hashed, not the modules it imports.
    """
    if not is_user_model(name):
        return None
    module, _ = import_user_module("model", name)
    path = getattr(module, "__file__", None)
    if not path:
        raise ConfigError(f"model={name!r}: module {module.__name__!r} has no source file to hash; make it a .py file")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_model(spec: ModelSpec) -> nn.Module:
    check_model_name("model", spec.name)
    if library_of(spec.name) is not None:
        return build_library_model(spec)
    if not is_user_model(spec.name):
        return MODELS[spec.name](spec)
    model = user_builder("model", spec.name)(in_channels=spec.in_channels, num_classes=spec.num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model={spec.name!r} returned {type(model).__name__}, not a torch.nn.Module; "
            "it is called as build(in_channels=..., num_classes=...)"
        )
    return model


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The final linear layer: its outputs are the classes and must never be pruned."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ConfigError(
            f"the model has no nn.Linear producing the {num_classes} class logits, which pruning must keep; "
            "end the model with one"
        )
    return heads[-1]


def count_macs_and_params(model: nn.Module, spec: ModelSpec) -> tuple[int, int]:
    """Multiply-accumulates for one image, and parameter count."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, spec.example_input())
    model.train(was_training)
    return int(macs), int(params)
