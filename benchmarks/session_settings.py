"""What tuned session settings buy each model, and how far two benches of the same models lie apart.

For every ONNX file given, the bench stage's settings search (pipeline/runtime/tuning.py) picks its fastest settings
at batch 1. Then, `--repeats` times, every model is timed at the fixed settings edgeforge used before the search (2
intra-op threads, spinning off, all optimizations), at 1 thread (spinning off) and at its tuned settings, all in one
interleaved-rounds measurement (pipeline/runtime/rounds.py, the bench stage's method). Every ratio is taken inside
one repeat; the table shows the median over repeats and the spread of each p50 between repeats.

    python benchmarks/session_settings.py artifacts/cache/export/*/*.onnx artifacts/cache/quantize/*/*.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from pipeline.runtime import rounds, tuning
from pipeline.runtime.environment import identity
from pipeline.runtime.feeds import input_dtypes, make_feed
from pipeline.runtime.latency import QUICK
from pipeline.runtime.onnx_files import input_signature, load_checked
from pipeline.runtime.sessions import SessionSettings
from pipeline.runtime.timing import time_session

PROVIDER = "cpu"
BEFORE = SessionSettings(threads=2, spinning=False, optimization="all")  # edgeforge's fixed setting before tuning
ONE_THREAD = SessionSettings(threads=1, spinning=False, optimization="all")


def batch1_feed(path: Path) -> dict[str, np.ndarray]:
    model = load_checked(path)
    signature = input_signature(model)
    return make_feed(signature, input_dtypes(model, signature), {}, batch=1, seed=0)


def tuned_settings(path: Path, feed: dict[str, np.ndarray]) -> SessionSettings:
    cores = os.cpu_count() or 1
    settings = tuning.candidates(tuple(range(1, cores + 1)), (False, True), tuning.all_levels())
    winner, _, _ = tuning.tune(path, PROVIDER, feed, 1, settings)
    return winner


def one_repeat(models: dict[str, tuple[Path, dict, SessionSettings]], rounds_per_repeat: int) -> dict[str, float]:
    """p50 (ms) of every model at every setting, all timed in one interleaved measurement."""
    jobs = {}
    for name, (path, feed, tuned) in models.items():
        for label, settings in (("before", BEFORE), ("1 thread", ONE_THREAD), ("tuned", tuned)):
            jobs[f"{name}|{label}"] = lambda p=path, s=settings, f=feed: time_session(p, PROVIDER, s, f, QUICK, 1)[0]
    measured = rounds.measure(jobs, rounds_per_repeat, tolerance=0.1, retries=2)
    return {job: float(np.median(result["round_medians"])) for job, result in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    models = {}
    for path in args.models:
        feed = batch1_feed(path)
        models[path.stem] = (path, feed, tuned_settings(path, feed))
    repeats = [one_repeat(models, args.rounds) for _ in range(args.repeats)]
    print(f"CPU: {identity()['cpu']}, {os.cpu_count()} cores; {args.repeats} repeats of {args.rounds} rounds")
    print(
        "| model | tuned settings | before: 2 threads, spinning off | 1 thread | tuned | tuned vs before |"
        " spread of tuned p50 between repeats |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for name, (_, _, tuned) in models.items():
        p50 = {
            label: statistics.median(r[f"{name}|{label}"] for r in repeats) for label in ("before", "1 thread", "tuned")
        }
        gains = [r[f"{name}|before"] / r[f"{name}|tuned"] for r in repeats]
        tuned_p50s = [r[f"{name}|tuned"] for r in repeats]
        spread = (max(tuned_p50s) - min(tuned_p50s)) / statistics.median(tuned_p50s)
        print(
            f"| {name} | {tuned.label()} | {p50['before']:.4f} | {p50['1 thread']:.4f} | {p50['tuned']:.4f} | "
            f"{statistics.median(gains):.2f}× ({min(gains):.2f}–{max(gains):.2f}) | {spread:.1%} |"
        )
        rows[name] = {"tuned": tuned.label(), "p50_ms": p50, "gain": gains, "tuned_p50_by_repeat": tuned_p50s}
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
