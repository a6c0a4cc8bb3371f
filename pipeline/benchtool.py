"""The engine of `edgeforge bench MODEL.onnx`: latency of any ONNX file per provider, thread count and batch size.

- The file goes through `load_checked` (path, protobuf, checker and external-data checks) before any session
  reads it; sessions then load the same path.
- Inputs are fixed random tensors, seeded per (seed, batch, input index): floats standard normal, integers 0 or 1
  (valid as indices and masks), booleans half true. A symbolic first dim is the batch; `--shape` gives a full
  shape for one input; any other symbolic dim without `--shape` is an error that shows the fix.
- Every (provider, threads, batch) gets its own InferenceSession with edgeforge's session options, so no run
  inherits another's allocations or thread pool; its creation time is recorded.
- CUDA and TensorRT run only when onnxruntime has the provider; otherwise the result says so ("skipped") and the
  CPU is never timed in their place. On a GPU, inputs are bound once on the device and outputs stay there (IO
  binding), so host/device copies are not timed as compute.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from pipeline import environment
from pipeline.errors import ConfigError
from pipeline.latency import summarize, time_runs
from pipeline.onnx_files import first_line, input_signature, load_checked, numpy_dtype, output_signature
from pipeline.onnx_tools import session_options, session_options_record

# name on the command line -> (the provider that must be present, the providers handed to the session)
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", ["CPUExecutionProvider"]),
    "cuda": ("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": (
        "TensorrtExecutionProvider",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    ),
}
PRESET_KEYS = ("warmup_runs", "warmup_seconds", "min_runs", "min_seconds")
ORT_ERRORS = tuple(
    getattr(ort_state, name)
    for name in ("Fail", "InvalidArgument", "InvalidGraph", "NoSuchFile", "NotImplemented", "RuntimeException")
    if hasattr(ort_state, name)
) + (RuntimeError,)

Signature = list[tuple[str, str, list[int | str] | None]]


class ProviderUnavailable(Exception):
    """The provider is missing or did not initialize: reported as a skipped result, never replaced by CPU."""


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


def bench_file(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    batch_sizes: tuple[int, ...],
    threads: tuple[int, ...],
    providers: tuple[str, ...],
    preset: dict,
    seed: int = 0,
) -> dict:
    """Latency of the ONNX file at `path` for every provider x threads x batch size (see the module docstring).

    `batch_sizes=()` means the model's own batch: 1 for a symbolic batch, else its fixed first dim.
    """
    check_arguments(threads, providers, preset)
    path = Path(path)
    model = load_checked(path)
    signature = input_signature(model)
    check_shapes(signature, shapes)
    batches = resolve_batches(path, signature, shapes, batch_sizes)
    dtypes = input_dtypes(model, signature)
    feeds = {batch: make_feed(signature, dtypes, shapes, batch, seed) for batch in batches}
    results: list[dict[str, Any]] = []
    for provider in providers:
        try:
            for count in threads:
                results.extend(bench_one(path, provider, count, batch, feeds[batch], preset) for batch in batches)
        except ProviderUnavailable as reason:
            results.append({"provider": provider, "skipped": str(reason)})
    return {
        "model": describe_file(path, model, signature),
        "environment": environment.describe(threads[0]),
        "session_options": {**session_options_record(threads[0]), "intra_op_num_threads": list(threads)},
        "preset": dict(preset),
        "seed": seed,
        "results": results,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def check_arguments(threads: tuple[int, ...], providers: tuple[str, ...], preset: dict) -> None:
    if not threads or any(count < 1 for count in threads):
        raise ConfigError(f"threads={list(threads)!r}: expected one or more integers >= 1")
    if not providers:
        raise ConfigError(f"providers=[]: expected one or more of {', '.join(PROVIDERS)}")
    unknown = [name for name in providers if name not in PROVIDERS]
    if unknown:
        raise ConfigError(f"provider {unknown[0]!r} is not known: expected one of {', '.join(PROVIDERS)}")
    if sorted(preset) != sorted(PRESET_KEYS):
        raise ConfigError(f"preset {preset!r}: expected exactly the keys {', '.join(PRESET_KEYS)}")


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


def bench_one(
    path: Path, provider: str, threads: int, batch: int, feed: dict[str, np.ndarray], preset: dict
) -> dict[str, Any]:
    """One fresh session, warmed up and timed with `preset`."""
    sess, seconds = create_session(path, provider, threads)
    run = DeviceRunner(sess, feed) if provider != "cpu" else (lambda: sess.run(None, feed))
    try:
        times = time_runs(run, **preset)  # check_arguments made sure it has exactly time_runs' keys
    except ORT_ERRORS as error:
        raise ConfigError(
            f"{path}: onnxruntime fails running it on {provider} at batch {batch}: {first_line(error)}"
        ) from error
    return {
        "provider": provider,
        "threads": threads,
        "batch": batch,
        "session_seconds": seconds,
        **summarize(times, batch),
    }


def create_session(path: Path, provider: str, threads: int) -> tuple[ort.InferenceSession, float]:
    """A session on `provider` and the seconds its creation took; ProviderUnavailable if it is not there."""
    required, chain = PROVIDERS[provider]
    if required not in ort.get_available_providers():
        raise ProviderUnavailable(f"onnxruntime has no {required} (install the gpu extra)")
    started = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=chain)
    except ORT_ERRORS as error:
        raise ConfigError(f"{path}: onnxruntime cannot load it on {provider}: {first_line(error)}") from error
    seconds = time.perf_counter() - started
    if required not in sess.get_providers():  # onnxruntime falls back to CPU when a GPU provider fails to start
        raise ProviderUnavailable(f"{required} did not initialize (the session got {', '.join(sess.get_providers())})")
    return sess, seconds


class DeviceRunner:
    """One inference with inputs and outputs on CUDA device 0 (IO binding), so only compute is timed."""

    def __init__(self, sess: ort.InferenceSession, feed: dict[str, np.ndarray]):
        self.sess = sess
        self.binding = sess.io_binding()
        # Copied to the device once, here, not in the timed loop; held here so the buffers outlive the binding.
        self.inputs = {name: ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0) for name, array in feed.items()}
        for name, value in self.inputs.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.synchronize_inputs()
        for output in sess.get_outputs():
            self.binding.bind_output(output.name, "cuda", 0)

    def __call__(self) -> None:
        self.sess.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()  # wait for the device: otherwise only the kernel launches are timed


def describe_file(path: Path, model: onnx.ModelProto, signature: Signature) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": str(path),
        "sha256": digest.hexdigest(),
        "size_bytes": path.stat().st_size,
        "inputs": signature,
        "outputs": output_signature(model),
    }


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (sessions included); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kilobytes on Linux


def format_table(result: dict) -> str:
    """The results as a fixed-width table, a line about the model before it and one about the environment after."""
    model = result["model"]
    header = ["provider", "threads", "batch", "p50 ms", "p90 ms [95% CI]", "p99 ms", "mean±std ms", "img/s", "runs"]
    rows, skipped = [header], []
    for entry in result["results"]:
        if "skipped" in entry:
            skipped.append(f"{entry['provider']}: skipped: {entry['skipped']}")
            continue
        low, high = entry["p90_ci_ms"]
        rows.append(
            [
                entry["provider"],
                str(entry["threads"]),
                str(entry["batch"]),
                _ms(entry["p50_ms"]),
                f"{_ms(entry['p90_ms'])} [{_ms(low)}, {_ms(high)}]",
                _ms(entry["p99_ms"]),
                f"{_ms(entry['mean_ms'])}±{_ms(entry['std_ms'])}",
                f"{entry['throughput_ips']:.1f}",
                str(entry["runs"]),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [f"model: {model['path']} (sha256 {model['sha256'][:12]}, {model['size_bytes']} bytes)"]
    lines += [_format_row(row, widths) for row in rows]
    return "\n".join(lines + skipped + [_environment_line(result)])


def _format_row(row: list[str], widths: list[int]) -> str:
    """The first column (provider) left-aligned, the numbers right-aligned."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def _ms(value: float) -> str:
    """Milliseconds to 0.1 us below 1 ms (tiny models), to 1 us below 100 ms, else to 0.1 ms."""
    return f"{value:.4f}" if value < 1 else f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _environment_line(result: dict) -> str:
    env, preset = result["environment"], result["preset"]
    return (
        f"environment: {env['cpu']} ({' '.join(env['isa']) or 'no listed ISA flags'}), {env['cores']} cores, "
        f"onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, python {env['python']}; "
        f"warm-up >= {preset['warmup_runs']} runs and {preset['warmup_seconds']} s, "
        f"timed >= {preset['min_runs']} runs and {preset['min_seconds']} s"
    )
