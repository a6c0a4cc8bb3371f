"""What changes a latency number: CPU, ISA flags, cores, library versions. Recorded beside every number."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path

# x86 flags, then Arm's (asimddp: int8 dot products, i8mm: int8 matrix multiply; what int8 kernels need there)
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "neon",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


CPU_IDS = (("cpu family", "model", "stepping"), ("CPU implementer", "CPU part", "CPU revision"))


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo: SMT siblings share a core."""
    try:
        blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
    except OSError:
        return None
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def isa() -> list[str]:
    """The ISA_FLAGS this CPU has (x86 `flags` or Arm `Features` of /proc/cpuinfo)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return sorted(flag for flag in ISA_FLAGS if flag in flags)


def has_vnni(flags: list[str]) -> bool:
    """VPDPBUSD: u8 x s8 products accumulate in 32 bits, without VPMADDUBSW's saturating 16-bit step."""
    return "avx512_vnni" in flags or "avx_vnni" in flags


X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def is_x86() -> bool:
    return platform.machine().lower() in X86_MACHINES


def board() -> str | None:
    """The board's name where the device tree or cpuinfo gives it (a Raspberry Pi, a Jetson); None on a PC."""
    try:
        return Path("/proc/device-tree/model").read_text().rstrip("\x00\n") or None
    except OSError:
        return _cpuinfo().get("Model")


def cores() -> int:
    """CPUs this process may run on (its affinity), the most intra-op threads worth trying."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def identity() -> dict[str, object]:
    """What makes a latency this machine's: part of the cache keys of the stages that measure, so an artifacts
    folder shared between machines re-measures instead of reusing another machine's numbers and decisions."""
    import onnxruntime

    info = _cpuinfo()
    flags = sorted(set((info.get("flags") or info.get("Features") or "").split()))
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "board": board(),
        "machine": platform.machine(),
        # x86: family, model, stepping; Arm: implementer, part (the core: 0xd08 is a Cortex-A72), revision
        "cpu_family_model_stepping": [info.get(k) for k in CPU_IDS["cpu family" not in info]],
        "cpu_flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest(),
        "cores": cores(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_build": onnxruntime.get_build_info() if hasattr(onnxruntime, "get_build_info") else None,
        "providers": onnxruntime.get_available_providers(),
    }


def describe() -> dict[str, object]:
    """The environment a report's numbers were measured in, for people to read."""
    import onnxruntime

    info = _cpuinfo()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": cores(),
        "physical_cores": physical_cores(),
        "isa": isa(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "onnx": metadata.version("onnx"),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_build": onnxruntime.get_build_info() if hasattr(onnxruntime, "get_build_info") else None,
        "torch_pruning": metadata.version("torch-pruning"),
        "providers": onnxruntime.get_available_providers(),
    }
