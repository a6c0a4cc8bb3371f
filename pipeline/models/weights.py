"""Weights a user brings: a `.safetensors` file or a state_dict `.pt`, checked key by key against the model.

Only tensors are read (safetensors, or torch.load with weights_only=True): a file holding a pickled module is
refused, never unpickled. Every way a file can fail to fit the model is one line naming the file, the key and the
fix. A classifier head with another class count is re-initialised only when the config allows it (reinit_head).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pipeline.errors import ConfigError, first_line

SUFFIXES = (".safetensors", ".pt", ".pth")
FIX = "choose the model (and width) these weights were saved from"
SAVE_HINT = "save it with torch.save(model.state_dict(), PATH) or safetensors.torch.save_file(model.state_dict(), PATH)"


def read_state_dict(key: str, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of `path` by name, or a one-line ConfigError naming `key` (e.g. 'teacher.weights')."""
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r}: no such file; give the path of a .safetensors or state_dict .pt file")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ConfigError(f"{key}={str(path)!r} is not a readable safetensors file ({first_line(error)})") from None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # what weights_only=True raises for pickled classes (a whole nn.Module)
        raise ConfigError(
            f"{key}={str(path)!r} holds pickled Python objects (a whole model?), which are never loaded; {SAVE_HINT}"
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        raise ConfigError(f"{key}={str(path)!r} is not a readable torch file ({first_line(error)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = f"a dict with keys {sorted(map(str, state))[:5]}" if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{key}={str(path)!r} is {what}, not a state_dict of tensors; {SAVE_HINT}")
    return state


def load_checked(
    model: nn.Module, state: dict[str, torch.Tensor], head: nn.Linear, *, where: str, built: str, reinit_head: bool
) -> None:
    """Load `state` into `model` (in place) when every key and shape fits; else a one-line ConfigError.

    Errors name the weights by `where` ("teacher.weights='/x.pt'") and the model by the config key it was `built`
    from ("teacher.model='cnn'"). With `reinit_head`, the classifier `head`'s tensors may have another shape: the
    model keeps its own freshly initialised ones."""
    section = built.partition(".")[0]
    expected = model.state_dict()
    head_keys = {f"{name}.{tensor}" for name, m in model.named_modules() if m is head for tensor in ("weight", "bias")}
    # BatchNorm's step counter is not a weight; files written by other tools often leave it out.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise ConfigError(f"{where} has no {_first(missing)}, which {built} needs; {FIX}")
    if unexpected:
        raise ConfigError(f"{where} has {_first(unexpected)}, which {built} lacks; {FIX}")
    fitted = dict(expected)
    for key, current in expected.items():  # in the model's order: the first layer that does not fit is named
        tensor = state.get(key, current)
        if tensor.shape == current.shape:
            fitted[key] = tensor
        elif key in head_keys and not reinit_head:
            raise ConfigError(
                f"{where}: classifier {key!r} has shape {list(tensor.shape)}, the data's {head.out_features} classes "
                f"need {list(current.shape)}; set {section}.reinit_head: true to train a new classifier"
            )
        elif key not in head_keys:
            raise ConfigError(
                f"{where}: {key!r} has shape {list(tensor.shape)}, {built} needs {list(current.shape)}; {FIX}"
            )
    model.load_state_dict(fitted)


def _first(keys: list[str]) -> str:
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"key {keys[0]!r}{more}"
