"""torch.export (the exporter edgeforge uses) against torch.onnx's legacy TorchScript exporter: the time of each
export, whether the two graphs compute the same, and their latency in onnxruntime.

Per model: one process exports it `--exports` times each way, alternating (export_fresh, as the export stage and
the searches do; the legacy exporter with the same names, dynamic batch axis and opset); then both files are timed
at batch 1 on one thread in `--rounds` interleaved rounds (the order flips each round), each round the median of
`--runs` runs after a warm-up. The first dynamo export of a process pays the exporter's imports.

    python benchmarks/exporters.py --exports 3 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime.onnx_export import DEFAULT_OPSET, export_fresh
from pipeline.runtime.sessions import INPUT_NAME, OUTPUT_NAME

MODELS = {  # name -> (architecture, width, channels, size): the digits student and three CIFAR-10 models
    "cnn digits": ("cnn", 8, 1, 8),
    "resnet8_s2 CIFAR-10": ("resnet8_s2", 16, 3, 32),
    "resnet20 CIFAR-10": ("resnet20", 16, 3, 32),
    "mobilenetv2 CIFAR-10": ("mobilenetv2", 32, 3, 32),
}
WAYS = ("dynamo", "torchscript")


def export(model: torch.nn.Module, spec: ModelSpec, way: str, path: Path) -> float:
    """Seconds to export `model` to `path` the given way."""
    started = time.monotonic()
    if way == "dynamo":
        export_fresh(model, spec, path, DEFAULT_OPSET)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its DeprecationWarning: the legacy exporter
            torch.onnx.export(
                model,
                (spec.example_input(2),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=DEFAULT_OPSET,
                dynamo=False,
            )
    return time.monotonic() - started


def round_median_ms(session: ort.InferenceSession, feed: dict, runs: int) -> float:
    for _ in range(runs // 5):
        session.run(None, feed)
    laps = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        laps.append(time.perf_counter() - started)
    return statistics.median(laps) * 1000


def compare(name: str, exports: int, rounds: int, runs: int, folder: Path) -> None:
    architecture, width, channels, size = MODELS[name]
    spec = ModelSpec(architecture, width, channels, 10, (size, size))
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # BatchNorm statistics other than the identity, so that folding them shows
        for _ in range(3):
            model(spec.example_input(64) * 3)
    model.eval()
    paths = {way: folder / f"{architecture}-{way}.onnx" for way in WAYS}
    seconds = {way: [] for way in WAYS}
    for _ in range(exports):
        for way in WAYS:
            seconds[way].append(export(model, spec, way, paths[way]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {way: ort.InferenceSession(str(paths[way]), options, providers=["CPUExecutionProvider"]) for way in WAYS}
    feed = {INPUT_NAME: spec.example_input(1).numpy()}
    outputs = {way: session.run(None, feed)[0] for way, session in sessions.items()}
    medians = {way: [] for way in WAYS}
    for index in range(rounds):
        for way in WAYS if index % 2 == 0 else WAYS[::-1]:
            medians[way].append(round_median_ms(sessions[way], feed, runs))
    ratios = [legacy / dynamo for legacy, dynamo in zip(medians["torchscript"], medians["dynamo"], strict=True)]
    print(f"| {name} | " + " | ".join(" ".join(f"{s:.2f}" for s in seconds[way]) for way in WAYS) + " | "
          f"{float(np.abs(outputs['dynamo'] - outputs['torchscript']).max()):.1e} | "
          + " | ".join(f"{statistics.median(medians[way]):.4f} [{min(medians[way]):.4f}-{max(medians[way]):.4f}]"
                       for way in WAYS)
          + f" | {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--model", action="append", choices=list(MODELS), help="default: all")
    args = parser.parse_args()
    print(
        "| model | export s, torch.export (dynamo) | export s, legacy TorchScript | max abs difference of outputs "
        "| p50 ms dynamo, median of rounds [range] | p50 ms TorchScript | ratio TorchScript/dynamo per round |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.model or MODELS:
            compare(name, args.exports, args.rounds, args.runs, Path(folder))


if __name__ == "__main__":
    main()
