"""Loading ONNX files a user hands us: every way a file can be wrong is one ConfigError line naming the file.

Order of checks: onnx version, the path itself (missing, symlink, not a file), the protobuf (parsed without
external data), every external-data location (before anything is read from it), then the external data is
loaded with onnx's own checks (which repeat ours), then `onnx.checker.check_model`.

External-data paths have had traversal and link CVEs (CVE-2022-25882, CVE-2024-27318, symlink and hardlink
fixes in onnx 1.21), hence the version floor and our own checks in front of onnx's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path, PureWindowsPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from pipeline.errors import ConfigError, first_line

MIN_ONNX = (1, 21)


def load_checked(path: Path) -> onnx.ModelProto:
    """The model at `path` with its external data loaded, or a ConfigError saying what is wrong with the file."""
    require_onnx_version()
    path = Path(path)
    check_path(path)
    model = parse(path)
    tensors = [tensor for tensor in all_tensors(model) if tensor.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in tensors:
        check_external_location(path, tensor)
    if tensors:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (onnx.checker.ValidationError, OSError, ValueError) as error:
            raise ConfigError(f"{path}: cannot load its external data: {first_line(error)}") from error
    run_checker(path, model)
    return model


def run_checker(path: Path, model: onnx.ModelProto) -> None:
    """onnx.checker on the loaded model; from the file when the model is too big for one protobuf (> 2 GB)."""
    try:
        if model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(model)
        else:  # the checker then reads the external data itself, with the same location checks
            onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as error:
        raise ConfigError(f"{path}: onnx.checker rejects the model: {first_line(error)}") from error


def require_onnx_version() -> None:
    installed = metadata.version("onnx")
    numbers = tuple(int(part) for part in re.findall(r"\d+", installed)[:2])
    if numbers < MIN_ONNX:
        raise ConfigError(
            f"onnx {installed} is installed, but loading ONNX files needs onnx >= 1.21 (its external-data path "
            "checks fix known CVEs): pip install 'onnx>=1.21'"
        )


def check_path(path: Path) -> None:
    if path.is_symlink():  # before exists(): a dangling link is a link, not a missing file
        raise ConfigError(f"{path}: is a symbolic link; pass the file itself (links are refused)")
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")


def parse(path: Path) -> onnx.ModelProto:
    """The protobuf without external data (so nothing outside the file is read yet)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as error:
        raise ConfigError(f"{path}: not an ONNX model or truncated ({first_line(error)})") from error
    # Some non-ONNX bytes parse as a protobuf with only unknown fields: no IR version, no graph.
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ConfigError(f"{path}: not an ONNX model or truncated (no ir_version or graph in it)")
    return model


def check_external_location(path: Path, tensor: onnx.TensorProto) -> None:
    """Refuse an external-data location that is absolute, climbs with '..', leaves the folder or is a link."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    where = f"{path}: tensor {tensor.name!r} has external data at {location!r}"
    if not location:
        raise ConfigError(f"{path}: tensor {tensor.name!r} is stored externally but names no location")
    if (
        location.startswith(("/", "\\")) or PureWindowsPath(location).is_absolute()
    ):  # Windows drive paths too, on any OS
        raise ConfigError(f"{where}, an absolute path; it must be relative to the model's folder")
    parts = re.split(r"[/\\]", location)
    if ".." in parts:
        raise ConfigError(f"{where}, which contains '..'; it must stay inside the model's folder")
    folder = path.parent.resolve()
    candidate = folder.joinpath(*parts)
    if not candidate.resolve().is_relative_to(folder):
        raise ConfigError(f"{where}, which resolves outside the model's folder {folder}")
    for step in _steps(folder, parts):  # a linked sub-folder escapes as well as a linked file
        if step.is_symlink():
            raise ConfigError(f"{where}; {step} is a symbolic link (links are refused)")
    if not candidate.is_file():
        raise ConfigError(f"{where}, which does not exist or is not a file")
    if candidate.stat().st_nlink > 1:
        raise ConfigError(f"{where}, which has several hard links (refused: it may be a link to another file)")


def _steps(folder: Path, parts: list[str]) -> Iterator[Path]:
    current = folder
    for part in parts:
        current = current / part
        yield current


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can carry external data: initializers, sparse ones, attribute tensors, in subgraphs and
    functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for graph in attribute.graphs:
                yield from _graph_tensors(graph)


def input_signature(model: onnx.ModelProto) -> list[tuple[str, str, list[int | str] | None]]:
    """(name, element type, dims) of each real input (initializers listed as inputs by old exporters are not).

    The element type is numpy's name ('float32', 'int64', 'bool'), or the kind for non-tensors ('sequence', ...).
    A dim is an int, the symbol's name, or '?' for an unnamed symbolic dim; dims is None when the rank is unknown.
    """
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [_describe(value) for value in model.graph.input if value.name not in initializers]


def output_signature(model: onnx.ModelProto) -> list[tuple[str, str, list[int | str] | None]]:
    return [_describe(value) for value in model.graph.output]


def _describe(value: onnx.ValueInfoProto) -> tuple[str, str, list[int | str] | None]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return value.name, str(kind).removesuffix("_type"), None
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return value.name, element_type_name(tensor.elem_type), None
    dims: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return value.name, element_type_name(tensor.elem_type), dims


def numpy_dtype(elem_type: int) -> np.dtype | None:
    """numpy's dtype for an ONNX element type; None for strings and types numpy cannot hold."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return None if dtype.kind == "O" else dtype


def element_type_name(elem_type: int) -> str:
    dtype = numpy_dtype(elem_type)
    return dtype.name if dtype is not None else onnx.TensorProto.DataType.Name(elem_type).lower()
