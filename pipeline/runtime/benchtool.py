"""The engine of `edgeforge bench MODEL.onnx`: latency of any ONNX file per provider, thread count and batch size.

- The file goes through `load_checked` (path, protobuf, checker and external-data checks) before any session
  reads it; sessions then load the same path.
- Inputs are fixed random tensors (pipeline/runtime/feeds.py); each combination is timed in its own session
  (pipeline/runtime/timing.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pipeline.errors import ConfigError
from pipeline.runtime import environment, one_thread_rival, targets, tuning
from pipeline.runtime.feeds import Signature, check_shapes, input_dtypes, make_feed, resolve_batches
from pipeline.runtime.latency import summarize, tail_intervals
from pipeline.runtime.onnx_files import input_signature, load_checked, output_signature
from pipeline.runtime.rounds import measure
from pipeline.runtime.rounds import method as rounds_method
from pipeline.runtime.sessions import SessionSettings
from pipeline.runtime.timing import (
    PRESET_KEYS,
    PROVIDER_NAMES,
    ProviderUnavailable,
    is_provider,
    peak_rss_bytes,
    provider_name,
    time_session,
)


def bench_file(
    path: Path,
    shapes: dict[str, tuple[int, ...]],
    batch_sizes: tuple[int, ...],
    threads: tuple[int, ...],
    providers: tuple[str, ...],
    preset: dict,
    seed: int = 0,
    rounds: int = 1,
    tune: bool = False,
    target: str = "local",
    provider_options: dict[str, dict[str, str]] | None = None,
    timeout: float = targets.TIMEOUT_S,
) -> dict:
    """Latency of the ONNX file at `path` for every provider x threads x batch size (see the module docstring),
    in `rounds` interleaved rounds (pipeline/runtime/rounds.py: 10% tolerance, 2 retries). With `tune`, on the CPU
    the threads are not taken from `threads` but the fastest settings are searched at the first batch size.

    `batch_sizes=()` means the model's own batch: 1 for a symbolic batch, else its fixed first dim. A `target`
    other than local is a device (ssh://...), measured there by the same code (pipeline/runtime/targets.py).
    """
    check_arguments(threads, providers, preset)
    targets.check(target)
    path = Path(path)
    model = load_checked(path)
    signature = input_signature(model)
    check_shapes(signature, shapes)
    batches = resolve_batches(path, signature, shapes, batch_sizes)
    dtypes = input_dtypes(model, signature)
    feeds = {batch: make_feed(signature, dtypes, shapes, batch, seed) for batch in batches}
    if target != targets.LOCAL:
        remote = on_target(target, path, feeds, threads, providers, preset, rounds, tune, provider_options, timeout)
        return {"model": describe_file(path, model, signature), "seed": seed, **remote}
    results, settings, tuned, check = here(
        path, feeds, threads, providers, preset, rounds, tune, provider_options or {}
    )
    return {
        "model": describe_file(path, model, signature),
        "environment": environment.describe(),
        "session_options": [s.record() for s in settings] if not tuned else tuned[0].record(),
        "settings_search": tuned[2] if tuned else None,
        "settings_check": check,
        "preset": dict(preset),
        "method": rounds_method(rounds, 0.1, 2, preset),
        "seed": seed,
        "results": results,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def here(path: Path, feeds: dict, threads, providers, preset: dict, rounds: int, tune: bool, options: dict):
    """bench_file's measurements on this machine: (rows, the settings measured, the settings search or None, the
    check of a several-thread winner against one thread or None). Tuned settings of more than one thread are held to
    the rounds as the bench stage holds them (pipeline/runtime/one_thread_rival.py): the model's fastest one-thread
    setting is timed in the same rounds, and the rows are those of the setting that ran faster."""
    batches = list(feeds)
    results: list[dict[str, Any]] = []
    tuned, check = None, None
    for provider in providers:
        settings = [SessionSettings(count) for count in threads]
        try:
            rival = None
            if tune and provider == "cpu":
                every = tuning.candidates(tuple(range(1, environment.cores() + 1)), (False, True), tuning.all_levels())
                tuned = tuning.tune(path, provider, feeds[batches[0]], batches[0], every)
                settings, rival = [tuned[0]], one_thread_rival.rival(tuned[2], every, tuned[0])
            chosen = options.get(provider_name(provider))
            timed = settings + ([rival] if rival else [])
            rows = measure_combinations(path, provider, timed, batches, feeds, preset, rounds, chosen)
            if rival:
                at_first = [row for row in rows if row["batch"] == batches[0]]  # every round's median, kept or dropped
                rounds_ms = {row["settings"]: row["round_medians_ms"] + row["dropped_rounds_ms"] for row in at_first}
                check = one_thread_rival.held(tuned[0], rival, rounds_ms[tuned[0].label()], rounds_ms[rival.label()])
                kept = rival if check["kept"] == "one_thread" else tuned[0]
                tuned = (kept, tuned[1], one_thread_rival.chosen_in_trace(tuned[2], kept))
                settings, rows = [kept], [row for row in rows if row["settings"] == kept.label()]
            results += rows
        except ProviderUnavailable as reason:
            results.append({"provider": provider, "skipped": str(reason)})
    return results, settings, tuned, check


def on_target(
    target: str, path: Path, feeds: dict, threads, providers, preset: dict, rounds: int, tune: bool, options, timeout
) -> dict[str, Any]:
    """bench_file's measurements on a device: one request per thread count (or one tuned), the same rows back."""
    with tempfile.TemporaryDirectory(prefix="edgeforge-bench-") as work:
        files = targets.Files()
        model = files.add(path)
        for batch, feed in feeds.items():
            np.savez(Path(work) / f"feed-{batch}.npz", **feed)
        digests = {batch: files.add(Path(work) / f"feed-{batch}.npz") for batch in feeds}
        answers = []
        for settings in [None] if tune else [[SessionSettings(count)] for count in threads]:
            request = targets.request(
                {"model": model},
                digests,
                next(iter(feeds)),
                dict(preset),
                providers=tuple(providers),
                settings=settings,
                rounds=rounds,
                retries=2,
                provider_options=options,
            )
            answers.append(targets.bench(target, request, files.located, timeout))
    measured = answers[-1]["models"]["model"]
    return {
        "target": target,
        "environment": answers[0]["environment"],
        "session_options": measured["settings"] if tune else [SessionSettings(count).record() for count in threads],
        "settings_search": measured["settings_search"] if tune else None,
        "settings_check": measured["settings_check"] if tune else None,
        "preset": dict(preset),
        "method": rounds_method(rounds, 0.1, 2, preset),
        "results": target_rows(answers, providers),
    }


def target_rows(answers: list[dict[str, Any]], providers) -> list[dict[str, Any]]:
    """The rows of bench_file's table from a device's answers (a provider it lacks: one skipped row)."""
    rows: list[dict[str, Any]] = []
    for provider in providers:
        skipped = answers[0]["skipped_providers"].get(provider)
        if skipped is not None:
            rows.append({"provider": provider, "skipped": skipped})
            continue
        for answer in answers:
            measured = answer["models"]["model"]
            settings = SessionSettings.from_record(measured["settings"])
            for batch, stats in measured["latency"][provider_name(provider)].items():
                row = {"provider": provider, "threads": settings.threads, "settings": settings.label()}
                rows.append({**row, "batch": int(batch), **stats})
    return rows


def measure_combinations(
    path: Path,
    provider: str,
    settings: list[SessionSettings],
    batches: tuple[int, ...],
    feeds: dict,
    preset: dict,
    rounds: int,
    options: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every settings x batch combination, each round a fresh session, in interleaved rounds."""
    seconds: dict[str, float] = {}

    def job(setting: SessionSettings, batch: int, name: str):
        def timed():
            times, seconds[name] = time_session(path, provider, setting, feeds[batch], preset, batch, options)
            return times

        return timed

    combos = {f"{i}@{batch}": (setting, batch) for i, setting in enumerate(settings) for batch in batches}
    measured = measure({name: job(*combo, name) for name, combo in combos.items()}, rounds, 0.1, 2)
    return [
        {
            "provider": provider,
            "threads": setting.threads,
            "settings": setting.label(),
            "batch": batch,
            "session_seconds": seconds[name],
            **summarize(measured[name]["times"], batch),
            **tail_intervals(measured[name]["times"]),
            "round_medians_ms": measured[name]["round_medians"],
            "dropped_rounds_ms": measured[name]["dropped_medians"],
            "spread": measured[name]["spread"],
            "stable": measured[name]["stable"],
        }
        for name, (setting, batch) in combos.items()
    ]


def check_arguments(threads: tuple[int, ...], providers: tuple[str, ...], preset: dict) -> None:
    if not threads or any(count < 1 for count in threads):
        raise ConfigError(f"threads={list(threads)!r}: expected one or more integers >= 1")
    if not providers:
        raise ConfigError(f"providers=[]: expected one or more of {PROVIDER_NAMES}")
    unknown = [name for name in providers if not is_provider(name)]
    if unknown:
        raise ConfigError(f"provider {unknown[0]!r} is not known: expected {PROVIDER_NAMES}")
    if sorted(preset) != sorted(PRESET_KEYS):
        raise ConfigError(f"preset {preset!r}: expected exactly the keys {', '.join(PRESET_KEYS)}")


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


def format_table(result: dict) -> str:
    """The results as a fixed-width table, a line about the model before it and one about the environment after."""
    model = result["model"]
    header = [
        "provider",
        "threads",
        "batch",
        "p50 ms",
        "p90 ms [95% CI]",
        "p99 ms [95% CI]",
        "mean±std ms",
        "img/s",
        "runs",
    ]
    header += ["spread"]
    rows, skipped = [header], []
    for entry in result["results"]:
        if "skipped" in entry:
            skipped.append(f"{entry['provider']}: skipped: {entry['skipped']}")
            continue
        low, high = entry["p90_ci_ms"]
        p99_low, p99_high = entry["p99_ci_ms"]
        rows.append(
            [
                entry["provider"],
                str(entry["threads"]),
                str(entry["batch"]),
                _ms(entry["p50_ms"]),
                f"{_ms(entry['p90_ms'])} [{_ms(low)}, {_ms(high)}]",
                f"{_ms(entry['p99_ms'])} [{_ms(p99_low)}, {_ms(p99_high)}]",
                f"{_ms(entry['mean_ms'])}±{_ms(entry['std_ms'])}",
                f"{entry['throughput_ips']:.1f}",
                str(entry["runs"]),
                f"{entry['spread']:.0%}" + ("" if entry["stable"] else " unstable"),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [f"model: {model['path']} (sha256 {model['sha256'][:12]}, {model['size_bytes']} bytes)"]
    lines += [_format_row(row, widths) for row in rows]
    return "\n".join(lines + skipped + _check_lines(result.get("settings_check")) + [_environment_line(result)])


def _check_lines(check: dict | None) -> list[str]:
    """The tuned settings' check against one thread (one_thread_rival.held), when there was one."""
    if check is None:
        return []
    kept = check["one_thread"] if check["kept"] == "one_thread" else check["searched"]
    return [
        f"settings: the search chose {check['searched']}; over the rounds it ran at {_ms(check['searched_ms'])} ms "
        f"and {check['one_thread']} at {_ms(check['one_thread_ms'])} ms (medians of every round's median): "
        f"{kept} kept"
    ]


def _format_row(row: list[str], widths: list[int]) -> str:
    """The first column (provider) left-aligned, the numbers right-aligned."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def _ms(value: float) -> str:
    """Milliseconds to 0.1 us below 1 ms (tiny models), to 1 us below 100 ms, else to 0.1 ms."""
    return f"{value:.4f}" if value < 1 else f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _environment_line(result: dict) -> str:
    env, preset = result["environment"], result["preset"]
    where = f"{result['target']}: " if "target" in result else ""
    onnx_version = f", onnx {env['onnx']}" if "onnx" in env else ""
    return (
        f"environment: {where}{env['cpu']} ({' '.join(env['isa']) or 'no listed ISA flags'}), {env['cores']} "
        f"cores, onnxruntime {env['onnxruntime']}{onnx_version}, python {env['python']}; "
        f"warm-up >= {preset['warmup_runs']} runs and {preset['warmup_seconds']} s, "
        f"timed >= {preset['min_runs']} runs and {preset['min_seconds']} s"
    )
