"""Timing one model in onnxruntime: a fresh session per provider, thread count and batch size, warmed up and timed.

- Every (provider, threads, batch) gets its own InferenceSession with edgeforge's session options, so no run
  inherits another's allocations or thread pool; its creation time is recorded.
- CUDA and TensorRT run only when onnxruntime has the provider; otherwise ProviderUnavailable says so ("skipped")
  and the CPU is never timed in their place. On a GPU, inputs are bound once on the device and outputs stay there
  (IO binding), so host/device copies are not timed as compute.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from pipeline.errors import ConfigError, first_line
from pipeline.runtime.latency import summarize, time_runs
from pipeline.runtime.sessions import SessionSettings

# short name -> (the provider that must be present, the providers handed to the session, in order). Any other
# onnxruntime provider is named in full ("...ExecutionProvider") and runs with the CPU behind it for the operators it
# lacks; a session that did not get the provider is reported as skipped, never timed on the CPU instead.
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", ["CPUExecutionProvider"]),
    "cuda": ("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": (
        "TensorrtExecutionProvider",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    ),
    **{
        short: (f"{full}ExecutionProvider", [f"{full}ExecutionProvider", "CPUExecutionProvider"])
        for short, full in (
            ("openvino", "OpenVINO"),
            ("xnnpack", "Xnnpack"),
            ("coreml", "CoreML"),
            ("dml", "Dml"),
            ("qnn", "QNN"),
            ("rocm", "ROCM"),
            ("migraphx", "MIGraphX"),
            ("nnapi", "Nnapi"),
            ("acl", "ACL"),
            ("armnn", "ArmNN"),
        )
    },
}


PROVIDER_NAMES = f"{', '.join(PROVIDERS)} or a full onnxruntime provider name (...ExecutionProvider)"


def provider_chain(provider: str) -> tuple[str, list[str]]:
    """(the provider that must be present, the session's providers) of a short name or a full provider name."""
    if provider in PROVIDERS:
        return PROVIDERS[provider]
    if provider.endswith("ExecutionProvider"):
        return provider, [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
    raise ValueError(
        f"provider {provider!r}: expected one of {', '.join(PROVIDERS)} or a full onnxruntime provider name"
    )


def is_provider(provider: str) -> bool:
    return provider in PROVIDERS or provider.endswith("ExecutionProvider")


def provider_name(provider: str) -> str:
    """The onnxruntime name of a provider given by short or full name."""
    return provider_chain(provider)[0]


def parse_provider_options(texts: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """('openvino:device_type=CPU',) -> {'OpenVINOExecutionProvider': {'device_type': 'CPU'}}, or a ConfigError."""
    options: dict[str, dict[str, str]] = {}
    for text in texts:
        provider, colon, setting = text.partition(":")
        key, equals, value = setting.partition("=")
        if not colon or not equals or not key or not is_provider(provider):
            raise ConfigError(
                f"bench.provider_options entry {text!r} is not allowed: expected PROVIDER:KEY=VALUE, e.g. "
                "'openvino:device_type=CPU'"
            )
        options.setdefault(provider_name(provider), {})[key] = value
    return options


PRESET_KEYS = ("warmup_runs", "warmup_seconds", "min_runs", "min_seconds")
ORT_ERRORS = tuple(
    getattr(ort_state, name)
    for name in ("Fail", "InvalidArgument", "InvalidGraph", "NoSuchFile", "NotImplemented", "RuntimeException")
    if hasattr(ort_state, name)
) + (RuntimeError,)


class ProviderUnavailable(Exception):
    """The provider is missing or did not initialize: reported as a skipped result, never replaced by CPU."""


def bench_one(
    path: Path, provider: str, settings: SessionSettings, batch: int, feed: dict[str, np.ndarray], preset: dict
) -> dict[str, Any]:
    """One fresh session, warmed up and timed with `preset`: its statistics."""
    times, seconds = time_session(path, provider, settings, feed, preset, batch)
    return {
        "provider": provider,
        "threads": settings.threads,
        "batch": batch,
        "session_seconds": seconds,
        **summarize(times, batch),
    }


def time_session(
    path: Path,
    provider: str,
    settings: SessionSettings,
    feed: dict[str, np.ndarray],
    preset: dict,
    batch: int,
    options: dict[str, str] | None = None,
) -> tuple[np.ndarray, float]:
    """Milliseconds of each timed run of one fresh session (and the seconds its creation took)."""
    sess, seconds = create_session(path, provider, settings, options)
    on_gpu = provider_chain(provider)[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    run = DeviceRunner(sess, feed) if on_gpu else (lambda: sess.run(None, feed))
    try:
        return time_runs(run, **preset), seconds
    except ORT_ERRORS as error:
        raise ConfigError(
            f"{path}: onnxruntime fails running it on {provider} at batch {batch}: {first_line(error)}"
        ) from error


def create_session(
    path: Path, provider: str, settings: SessionSettings, options: dict[str, str] | None = None
) -> tuple[ort.InferenceSession, float]:
    """A session on `provider` (with its provider `options`) and the seconds its creation took; ProviderUnavailable
    if this onnxruntime does not have it or it did not initialize."""
    required, chain = provider_chain(provider)
    if required not in ort.get_available_providers():
        hint = " (install the gpu extra)" if required in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else ""
        raise ProviderUnavailable(f"onnxruntime has no {required}{hint}")
    providers = [(name, options or {}) if name == required else name for name in chain]
    started = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), sess_options=settings.options(), providers=providers)
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


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (sessions included); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kilobytes on Linux
