"""Architectures from the libraries people use, by 'torchvision:NAME' or 'timm:NAME'.

Built for the data's class count and input channels, always with fresh weights: a saved model's spec rebuilds the
architecture this way, then its state_dict is loaded, so nothing is downloaded when a model is loaded. The
library's own pretrained weights (`*.pretrained: true`) come as a state_dict, loaded like a file the user brings.
The libraries are optional (`pip install 'edgeforge[models]'`) and imported only when a name asks for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.machinery
import importlib.util
import socket
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import ConfigError, first_line
from pipeline.models.spec import ModelSpec

LIBRARIES = ("torchvision", "timm")
INSTALL = "pip install -c constraints.txt 'edgeforge[models]'"
# torchvision's compiled operators serve detection (nms, roi_align, ...), never a classifier. Where they do not
# load (the registry's wheel is linked against CUDA torch: beside the CPU build libc10_cuda.so is missing),
# torchvision 0.28 still fails to import: it registers fake kernels for these two without checking that they
# exist, as it does for the others. Defining their schemas lets torchvision.models import; calling them still
# fails with torchvision's own "Couldn't load custom C++ ops".
UNCHECKED_TORCHVISION_OPERATORS = ("nms", "qnms")
# timm's weights come from the Hugging Face Hub. Offline, huggingface_hub retries each request five times with
# backoff (47.9 s here before the error) and reads its cache only when told it is offline: a connection tried first,
# for this long, tells it.
HUB_PROBE_TIMEOUT_S = 5.0


def library_of(name: str) -> str | None:
    """'timm' for 'timm:NAME', 'torchvision' for 'torchvision:NAME', None for any other name."""
    library, colon, _ = name.partition(":")
    return library if colon and library in LIBRARIES else None


def library_version(name: str) -> str | None:
    """'timm 1.0.31' for a timm model name (an upgrade can change an architecture: it belongs in the key)."""
    library = library_of(name)
    if library is None:
        return None
    try:
        return f"{library} {metadata.version(library)}"
    except metadata.PackageNotFoundError:
        raise ConfigError(f"model={name!r} needs {library}, which is not installed; {INSTALL}") from None


def import_library(key: str, name: str) -> ModuleType:
    """The library a 'LIBRARY:NAME' model name asks for, or a one-line ConfigError saying what to install."""
    library = library_of(name)
    try:
        torchvision_operators_or_their_schemas()
        return importlib.import_module(library)
    except Exception as error:  # torchvision built for another torch fails with a RuntimeError, not ImportError
        # timm imports torchvision: both fail when torchvision's compiled operators were built for another torch.
        wanted = "timm and the torchvision build for" if library == "timm" else "the torchvision build that matches"
        raise ConfigError(
            f"{key}={name!r} needs {library}, which does not import here ({type(error).__name__}: "
            f"{first_line(error)}); install {wanted} torch {torch.__version__}: {INSTALL}"
        ) from None


@functools.cache
def torchvision_operators_or_their_schemas() -> torch.library.Library | None:
    """Loads torchvision's compiled operators as its import would; where they do not load, defines the schemas its
    import needs and returns that definition, which lasts as long as the object (kept by the cache)."""
    package = importlib.util.find_spec("torchvision")
    if package is None or package.origin is None:
        return None  # not installed: import_library says so in one line
    folder = Path(package.origin).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"_C{suffix}").is_file():
            try:
                torch.ops.load_library(folder / f"_C{suffix}")
                return None
            except OSError:
                break
    schemas = torch.library.Library("torchvision", "DEF")
    for operator in UNCHECKED_TORCHVISION_OPERATORS:
        schemas.define(f"{operator}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return schemas


def check_library_model(key: str, name: str) -> None:
    """A one-line ConfigError unless the library imports and knows the classifier `name`."""
    module, model = import_library(key, name), name.partition(":")[2]
    if library_of(name) == "torchvision":  # classifiers only: detection and segmentation live in submodules
        exists, names = model in module.models.list_models(module=module.models), "torchvision.models.list_models()"
    else:
        exists, names = module.is_model(model), "timm.list_models()"
    if not exists:
        raise ConfigError(f"{key}={name!r} is not a classifier {library_of(name)} can build; see {names} for names")


def build_library_model(spec: ModelSpec) -> nn.Module:
    """A fresh (randomly initialised) model for `spec`'s classes and input channels."""
    module, model = import_library("model", spec.name), spec.name.partition(":")[2]
    if library_of(spec.name) == "timm":
        return module.create_model(model, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels)
    built = module.models.get_model(model, weights=None, num_classes=spec.num_classes)
    if spec.in_channels != 3:
        name, conv = input_convolution(built, spec)
        adapted = nn.Conv2d(
            spec.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
        )
        parent, _, attribute = name.rpartition(".")
        setattr(built.get_submodule(parent), attribute, adapted)
    return built


def input_convolution(model: nn.Module, spec: ModelSpec) -> tuple[str, nn.Conv2d]:
    """The first convolution, which reads the RGB image: (qualified name, layer), or a one-line refusal."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels != 3 or first[1].groups != 1:
        raise ConfigError(
            f"model={spec.name!r}: cannot adapt its first layer to {spec.in_channels}-channel images; use a "
            "timm: model (built for any number of channels) or 3-channel images"
        )
    return first


def pretrained_state_dict(key: str, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The library's own pretrained weights for `spec`'s architecture (downloaded into the library's cache once),
    with the input convolution adapted to `spec.in_channels`; the head keeps the pretraining's class count."""
    module, model = import_library(key, spec.name), spec.name.partition(":")[2]
    unreachable = ""
    try:
        if library_of(spec.name) == "timm":  # timm adapts the input convolution to in_chans itself
            with hub_offline_unless_reachable() as unreachable:
                return module.create_model(model, pretrained=True, in_chans=spec.in_channels).state_dict()
        state = module.models.get_model(model, weights="DEFAULT").state_dict()
    except Exception as error:  # offline: urllib, requests or huggingface_hub errors, each its own type
        why = f"{type(error).__name__}: {first_line(error)}"
        if unreachable:
            why = f"{unreachable} does not answer and they are not in huggingface_hub's cache"
        raise ConfigError(
            f"{key}=true: cannot get {spec.name}'s pretrained weights ({why}); offline, download them where you "
            f"can and pass the file as {key.rpartition('.')[0]}.weights (.safetensors or a state_dict .pt)"
        ) from None
    if spec.in_channels != 3:
        name, _ = input_convolution(build_library_model(dataclasses.replace(spec, in_channels=3)), spec)
        state[f"{name}.weight"] = adapt_input_kernel(state[f"{name}.weight"], spec.in_channels)
    return state


@contextlib.contextmanager
def hub_offline_unless_reachable() -> Iterator[str]:
    """huggingface_hub in offline mode while inside, when its endpoint does not take a connection (cached weights
    load, missing ones fail at once); yields the endpoint then, "" otherwise (nothing changed; nothing is probed
    when the user set HF_HUB_OFFLINE)."""
    constants = importlib.import_module("huggingface_hub.constants")
    if constants.HF_HUB_OFFLINE or answers(constants.ENDPOINT):
        yield ""
        return
    constants.HF_HUB_OFFLINE = True  # what HF_HUB_OFFLINE=1 sets at import; read on every request
    try:
        yield constants.ENDPOINT
    finally:
        constants.HF_HUB_OFFLINE = False


def answers(url: str) -> bool:
    """Whether the host of `url` takes a TCP connection within HUB_PROBE_TIMEOUT_S."""
    address = urlparse(url)
    port = address.port or (80 if address.scheme == "http" else 443)
    try:
        socket.create_connection((address.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def adapt_input_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB kernel (out, 3, k, k) for `in_channels` inputs: each channel gets the RGB sum over `in_channels`, so an
    image whose channels are equal (gray) gives exactly the response the pretrained kernel gives its RGB version."""
    return weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
