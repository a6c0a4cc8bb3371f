"""Do sessions of one and of two threads hold their speed over minutes? Each round times every model at 1 thread
(spinning on), 2 threads spinning on and 2 threads spinning off, each in a fresh session as the prune search times a
candidate at fixed settings (thread_probe.p50_at: the search's presets, 3 refine rounds), then waits a second.

    python benchmarks/thread_speeds.py SECONDS OUT.jsonl MODEL.onnx [MODEL.onnx ...]

One JSON line per round ({"t": seconds since the start, "NAME@1T": p50 ms, ...}), then the fastest, median and
slowest of each column on stdout. Inputs are seeded random tensors of each model's signature at batch 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.runtime.feeds import input_dtypes, make_feed
from pipeline.runtime.onnx_files import input_signature, load_checked
from pipeline.runtime.sessions import SessionSettings
from pipeline.search.thread_probe import p50_at

USAGE = "python benchmarks/thread_speeds.py SECONDS OUT.jsonl MODEL.onnx [MODEL.onnx ...]"
SETTINGS = {"1T": SessionSettings(1, True), "2T": SessionSettings(2, True), "2Toff": SessionSettings(2, False)}


def feed_of(path: Path) -> dict[str, np.ndarray]:
    """Seeded random inputs at batch 1, as `edgeforge bench` makes them."""
    model = load_checked(path)
    signature = input_signature(model)
    return make_feed(signature, input_dtypes(model, signature), {}, 1, seed=0)


def main() -> None:
    try:
        seconds, out, paths = float(sys.argv[1]), Path(sys.argv[2]), [Path(arg) for arg in sys.argv[3:]]
    except (IndexError, ValueError):
        raise SystemExit(f"thread_speeds: usage: {USAGE}") from None
    if not paths:
        raise SystemExit(f"thread_speeds: no model given; usage: {USAGE}")
    try:
        feeds = {path: feed_of(path) for path in paths}
    except ConfigError as error:
        raise SystemExit(f"thread_speeds: {error}") from None
    rows = []
    started = time.monotonic()
    with out.open("w") as lines:
        while time.monotonic() - started < seconds:
            row = {"t": round(time.monotonic() - started, 1)}
            for path in paths:
                for label, settings in SETTINGS.items():
                    timed = p50_at(path, feeds[path], 1, settings)
                    row[f"{path.parent.name}/{path.stem}@{label}"] = round(timed, 5)
            rows.append(row)
            lines.write(json.dumps(row) + "\n")
            lines.flush()
            time.sleep(1.0)
    for column in (key for key in rows[0] if key != "t"):
        ms = sorted(row[column] for row in rows)
        print(
            f"{column}: fastest {ms[0]:.4f}, median {ms[len(ms) // 2]:.4f}, slowest {ms[-1]:.4f} ms ({len(ms)} rounds)"
        )


if __name__ == "__main__":
    main()
