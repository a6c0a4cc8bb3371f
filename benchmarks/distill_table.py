"""Logit-only distillation against feature distillation, several seeds, with the pruned, from-scratch and int8
models of the logit arm: one Markdown table for BENCHMARKS.md.

    python benchmarks/distill_table.py --config configs/cifar10-cpu.yaml --artifacts /tmp/kd --seeds 0 1 \
        --set data.root=../shared/datasets/cifar10 --set distill.epochs=6 --jobs 2

Every arm shares the cached data and teacher and differs from the others only in `distill.feature_loss` and
`distill.seed`. The logit arm (feature_loss none, with its no-teacher baseline) of the `--full-seeds` (default: the
first seed) runs the whole pipeline; every other arm stops after distill, without the no-teacher baseline. Training
runs `--jobs` arms at a time, one thread each; export, quantize, bench and report then run one arm at a time, so no
training disturbs a latency measurement. A rerun re-uses every cached stage and only prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.cache import Artifact, ArtifactStore
from pipeline.reporting.intervals import accuracies_with_intervals

LOGIT = "none"
EDGEFORGE = str(Path(sys.executable).with_name("edgeforge"))


def full(args, seed: int, loss: str) -> bool:
    """Whether this arm runs the whole pipeline (pruned, from-scratch and int8 models) rather than stop at distill."""
    return loss == LOGIT and seed in args.full_seeds


def arm_command(args, seed: int, loss: str, until: str) -> list[str]:
    command = [EDGEFORGE, "--artifacts", args.artifacts, "run", "--config", args.config, "--until", until, "--json"]
    for override in [*args.set, f"distill.seed={seed}", f"distill.feature_loss={loss}"]:
        command += ["--set", override]
    if not full(args, seed, loss):
        command += ["--set", "distill.baseline=false"]
    return command


def run_arm(args, seed: int, loss: str, until: str, threads: str) -> dict[str, str]:
    """Run one arm up to `until`; the stage keys it used."""
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    done = subprocess.run(arm_command(args, seed, loss, until), env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a sign-off gate failed, the report is written
        sys.exit(f"arm seed={seed} feature_loss={loss} failed:\n{done.stderr[-2000:]}")
    return {stage["name"]: stage["key"] for stage in json.loads(done.stdout)["stages"]}


def entry(args, stage: str, key: str) -> Artifact:
    """The store's entry, verified through its hashes like any the pipeline reads."""
    artifact = ArtifactStore(Path(args.artifacts)).lookup(stage, key)
    if artifact is None:
        sys.exit(f"{stage} entry {key[:12]} is missing or corrupt in {args.artifacts}: run the arms again")
    return artifact


def metrics(args, stage: str, key: str) -> dict:
    return entry(args, stage, key).metrics


def interval(value: float, bounds: list[float]) -> str:
    return f"{value:.4f} ({bounds[0]:.3f}–{bounds[1]:.3f})"


def row(name: str, seed, record: dict, p50: str) -> str:
    return (
        f"| {name} | {seed} | {interval(record['validation_accuracy'], record['validation_interval'])} "
        f"| {interval(record['test_accuracy'], record['test_interval'])} | {p50} |"
    )


def table(args, keys: dict[tuple[int, str], dict[str, str]]) -> list[str]:
    """Rows grouped by model, seeds together; the teacher once (every arm shares it)."""
    first = keys[(args.seeds[0], LOGIT)]
    sizes = metrics(args, "data", first["data"])
    rows: dict[str, list[str]] = {}

    def add(name: str, seed, record: dict, p50: str) -> None:
        rows.setdefault(name, []).append(row(name, seed, record, p50))

    test_accuracy: dict[str, list[float]] = {}
    for (seed, loss), stage_keys in keys.items():
        distill = metrics(args, "distill", stage_keys["distill"])
        record = accuracies_with_intervals(distill["validation_accuracy"], distill["test_accuracy"], sizes)
        label = "logits only" if loss == LOGIT else "logits + " + loss
        test_accuracy.setdefault(label, []).append(distill["test_accuracy"])
        add(f"student, KD {label} (PyTorch)", seed, record, "")
        if not full(args, seed, loss):
            continue
        baseline = accuracies_with_intervals(
            distill["baseline_validation_accuracy"], distill["baseline_test_accuracy"], sizes
        )
        add("student without the teacher (PyTorch)", seed, baseline, "")
        scratch = metrics(args, "prune", stage_keys["prune"])["scratch"]
        record = accuracies_with_intervals(scratch["validation_accuracy"], scratch["test_accuracy"], sizes)
        add(f"pruned architecture from scratch with KD, {scratch['epochs']} epochs (PyTorch)", seed, record, "")
        report = json.loads(entry(args, "report", stage_keys["report"]).file("report.json").read_text())
        for model in report["models"]:
            record = {**model, "test_accuracy": model["accuracy"], "test_interval": model["accuracy_interval"]}
            latency = f"{model['latency']['CPUExecutionProvider']['1']['p50_ms']:.3f}"
            edge = ", edge model" if model["name"] == report["edge_model"] else ""
            add(f"{model['name']} (onnxruntime{edge})", "–" if model["name"] == "teacher" else seed, record, latency)
    lines = [
        "| model | seed | validation (95% interval) | test (95% interval) | batch-1 p50 (ms) |",
        "|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda name: (not name.startswith("teacher"), not name.startswith("student, KD")))
    for name in order:
        lines += rows[name][:1] if name.startswith("teacher") else rows[name]
    lines.append("")
    for label, accuracies in test_accuracy.items():
        spread = f"{min(accuracies):.4f}–{max(accuracies):.4f}"
        lines.append(f"- KD {label}: mean test accuracy {statistics.mean(accuracies):.4f} over seeds ({spread})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--feature-losses", nargs="+", default=["attention", "hint"])
    parser.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE for every arm")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at once (one thread each)")
    parser.add_argument("--full-seeds", type=int, nargs="*", help="seeds whose logit arm runs the whole pipeline")
    args = parser.parse_args()
    args.full_seeds = args.seeds[:1] if args.full_seeds is None else args.full_seeds
    arms = [(seed, loss) for seed in args.seeds for loss in [LOGIT, *args.feature_losses]]
    # The teacher once, before the arms share it (with every core).
    run_arm(args, args.seeds[0], LOGIT, "teacher", str(os.cpu_count()))
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = pool.map(lambda arm: run_arm(args, *arm, "prune" if full(args, *arm) else "distill", "1"), arms)
        keys = dict(zip(arms, trained, strict=True))
    for seed in args.full_seeds:  # one at a time: the bench measures latency
        keys[(seed, LOGIT)] = run_arm(args, seed, LOGIT, "report", str(os.cpu_count()))
    print("\n".join(table(args, keys)))


if __name__ == "__main__":
    main()
