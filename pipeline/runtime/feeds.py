"""The inputs `edgeforge bench` feeds any ONNX file: shapes from the model's signature and `--shape`, and fixed
random tensors.

A symbolic first dim is the batch; `--shape` gives a full shape for one input; any other symbolic dim without
`--shape` is an error that shows the fix. Inputs are seeded per (seed, batch, input index): floats standard
normal, integers 0 or 1 (valid as indices and masks), booleans half true.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from pipeline.errors import ConfigError
from pipeline.runtime.onnx_files import numpy_dtype

Signature = list[tuple[str, str, list[int | str] | None]]


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name=1x3x224x224` -> ('name', (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition("=")  # input names may contain '=', dims never do
    if not sep or not name or not dims:
        raise ConfigError(f"--shape {text!r}: expected NAME=DIMS, e.g. input=1x3x224x224")
    try:
        shape = tuple(int(dim) for dim in dims.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--shape {text!r}: dims must be integers separated by 'x', e.g. 1x3x224x224") from None
    if any(dim < 1 for dim in shape):
        raise ConfigError(f"--shape {text!r}: every dim must be >= 1")
    return name, shape


def check_shapes(signature: Signature, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every --shape names an input and fits it; every input's shape can be resolved."""
    names = [name for name, _, _ in signature]
    for name in shapes:
        if name not in names:
            raise ConfigError(f"--shape {name}=...: the model has no input {name!r}; its inputs: {', '.join(names)}")
    batch_params = _batch_params(signature, shapes)
    for name, _, dims in signature:
        if name in shapes:
            _check_given_shape(name, dims, shapes[name])
        elif dims is None:
            raise ConfigError(f"input {name!r} has no shape in the model: pass --shape {name}=DIMS, e.g. 1x3x224x224")
        else:
            _check_symbolic_dims(name, dims, batch_params)


def _check_symbolic_dims(name: str, dims: list[int | str], batch_params: set[str]) -> None:
    """Past the first (the batch), a symbolic dim is fine only when it is the batch's symbol."""
    for index, dim in enumerate(dims[1:], start=1):
        if isinstance(dim, str) and dim not in batch_params:
            raise ConfigError(
                f"input {name!r} has symbolic dim {index} ({dim!r}) that only --shape can fix: "
                f"pass --shape {name}={_shape_hint(dims)} with numbers for the <...>"
            )


def _check_given_shape(name: str, dims: list[int | str] | None, given: tuple[int, ...]) -> None:
    text = f"--shape {name}={'x'.join(map(str, given))}"
    if dims is None:
        return
    if len(given) != len(dims):
        raise ConfigError(f"{text}: rank {len(given)}, but input {name!r} has rank {len(dims)} {_dims_text(dims)}")
    for index, (want, got) in enumerate(zip(dims, given, strict=True)):
        if isinstance(want, int) and want != got:
            raise ConfigError(f"{text}: dim {index} is fixed at {want} in the model {_dims_text(dims)}")


def _batch_params(signature: Signature, shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """Names of symbolic first dims of inputs without --shape: these dims are the batch wherever they occur."""
    return {
        dims[0]
        for name, _, dims in signature
        if name not in shapes and dims and isinstance(dims[0], str) and dims[0] != "?"
    }


def _shape_hint(dims: list[int | str]) -> str:
    return "x".join(["1" if isinstance(dims[0], str) else str(dims[0])] + [_dim_hint(dim) for dim in dims[1:]])


def _dim_hint(dim: int | str) -> str:
    return str(dim) if isinstance(dim, int) else f"<{dim}>"


def _dims_text(dims: list[int | str]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def resolve_batches(
    path: Path, signature: Signature, shapes: dict[str, tuple[int, ...]], batch_sizes: tuple[int, ...]
) -> tuple[int, ...]:
    """The batch sizes to run: the requested ones when an input takes a batch, else the model's fixed batch."""
    if any(size < 1 for size in batch_sizes):
        raise ConfigError(f"batch sizes {list(batch_sizes)!r}: expected integers >= 1")
    requested = tuple(dict.fromkeys(batch_sizes))
    if any(name not in shapes and dims and isinstance(dims[0], str) for name, _, dims in signature):
        return requested or (1,)
    fixed = next((_shape_of(name, dims, shapes)[0] for name, _, dims in signature if _rank(name, dims, shapes)), 1)
    if requested and requested != (fixed,):
        raise ConfigError(
            f"{path}: no input takes a batch size (none has a symbolic first dim without --shape), so the batch is "
            f"fixed at {fixed}: pass --batch {fixed} or no --batch"
        )
    return (fixed,)


def _shape_of(name: str, dims: list[int | str] | None, shapes: dict[str, tuple[int, ...]]) -> tuple:
    return tuple(shapes[name]) if name in shapes else tuple(dims or ())


def _rank(name: str, dims: list[int | str] | None, shapes: dict[str, tuple[int, ...]]) -> int:
    return len(_shape_of(name, dims, shapes))


def input_dtypes(model: onnx.ModelProto, signature: Signature) -> dict[str, np.dtype]:
    """numpy dtype of each input; an input bench cannot feed (strings, sequences, maps) is an error."""
    by_name = {value.name: value for value in model.graph.input}
    dtypes = {}
    for name, kind, _ in signature:
        value = by_name[name]
        dtype = numpy_dtype(value.type.tensor_type.elem_type) if value.type.HasField("tensor_type") else None
        if dtype is None:
            raise ConfigError(f"input {name!r} is {kind}: bench feeds numeric and boolean tensors only")
        dtypes[name] = dtype
    return dtypes


def make_feed(
    signature: Signature, dtypes: dict[str, np.dtype], shapes: dict[str, tuple[int, ...]], batch: int, seed: int
) -> dict[str, np.ndarray]:
    """Seeded random inputs for one batch size (the same for every provider and thread count)."""
    feed = {}
    for index, (name, _, dims) in enumerate(signature):
        shape = tuple(shapes[name]) if name in shapes else _batched_shape(dims or [], batch)
        feed[name] = random_tensor(np.random.default_rng([seed, batch, index]), dtypes[name], shape)
    return feed


def _batched_shape(dims: list[int | str], batch: int) -> tuple[int, ...]:
    """check_shapes has made sure that every symbolic dim of an input without --shape is a batch dim."""
    return tuple(batch if isinstance(dim, str) else dim for dim in dims)


def random_tensor(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)  # 0/1: in range as an index, meaningful as a mask
    return np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))  # float16/32/64, bfloat16
