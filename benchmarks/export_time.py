"""What the two export speed-ups buy: onnxscript's torchlib list built once per process, and in-place activations
exported out of place (pipeline/runtime/onnx_export.py).

Each (model, variant) runs in a fresh interpreter that exports the model `--exports` times with export_fresh (the
same model again would otherwise be a copy of the process's first export): the first export pays the exporter's
imports, the later ones are what a search pays per candidate. "before" switches both speed-ups off in that process;
"after" is the code as it is. Variants alternate within each of `--repeats` rounds, so the machine's drift falls on
both; the table shows the median of the later exports over rounds, and their range.

    python benchmarks/export_time.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODELS = {  # name -> (architecture, width, channels, size): the digits student and two CIFAR-10 students
    "cnn digits": ("cnn", 8, 1, 8),
    "resnet20 CIFAR-10": ("resnet20", 16, 3, 32),
    "mobilenetv2 CIFAR-10": ("mobilenetv2", 32, 3, 32),
}

ONE_PROCESS = """
import contextlib, json, sys, tempfile, time
from pathlib import Path
import torch
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runtime import onnx_export
name, width, channels, size, exports, variant = json.loads(sys.argv[1])
if variant == "before":
    onnx_export._build_torchlib_list_once = lambda: None
    onnx_export._out_of_place = lambda model: contextlib.nullcontext()
torch.set_num_threads(1)
spec = ModelSpec(name, width, channels, 10, (size, size))
folder = Path(tempfile.mkdtemp())
seconds = []
for i in range(exports):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    start = time.perf_counter()
    onnx_export.export_fresh(model, spec, folder / f"{i}.onnx", 18)
    seconds.append(time.perf_counter() - start)
print(json.dumps(seconds))
"""


def export_seconds(model: tuple, exports: int, variant: str) -> list[float]:
    argument = json.dumps([*model, exports, variant])
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, argument], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exports", type=int, default=3)
    args = parser.parse_args()
    if args.exports < 2 or args.repeats < 1:
        parser.error(
            f"--exports {args.exports} --repeats {args.repeats}: need --exports 2 or more (the first export "
            "of a process is imports; the later ones are measured) and --repeats 1 or more"
        )
    print("| model | first export before / after (s) | each later export before / after (s, median [range]) | ratio |")
    print("|---|---|---|---|")
    for label, model in MODELS.items():
        first, later = {"before": [], "after": []}, {"before": [], "after": []}
        for repeat in range(args.repeats):
            order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
            for variant in order:
                seconds = export_seconds(model, args.exports, variant)
                first[variant].append(seconds[0])
                later[variant].append(statistics.median(seconds[1:]))
        cells = {v: f"{statistics.median(later[v]):.2f} [{min(later[v]):.2f}-{max(later[v]):.2f}]" for v in later}
        ratio = statistics.median(later["after"]) / statistics.median(later["before"])
        firsts = f"{statistics.median(first['before']):.1f} / {statistics.median(first['after']):.1f}"
        print(f"| {label} | {firsts} | {cells['before']} / {cells['after']} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
