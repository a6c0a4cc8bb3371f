"""report: pick the edge model, evaluate the sign-off gates, write report.json, report.md and model.onnx.

The edge model is the fastest model (p50 at `signoff.latency_batch` on `signoff.latency_provider`) among those
that pass the accuracy gates; int8 is not assumed faster. A latency budget (prune.target_latency_ms) becomes a
latency gate on the edge model (`PROVIDER:BATCH:p50<=BUDGET` in the report's signoff.latency_limits). If no
model passes the accuracy gates, the most accurate one is named and the sign-off fails. The runner copies this
stage's files to `artifacts/release/`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from pipeline.cache import Artifact
from pipeline.config import params_to_dict
from pipeline.errors import StageError, require
from pipeline.reporting.gates import choose_edge_model, pareto_front, parse_latency_limit, signoff_gates
from pipeline.reporting.html import render_html
from pipeline.reporting.markdown import render_markdown
from pipeline.runtime.benchtool import PROVIDERS

NAME = "report"
SECTION = "signoff"
VERSION = 9
INPUTS = ("data", "teacher", "distill", "prune", "export", "quantize", "bench")
TRAINS = False
OUTPUTS = ("report.json", "report.md", "report.html", "model.onnx")


@dataclasses.dataclass(frozen=True)
class Params:
    min_accuracy: float = 0.9  # test accuracy the edge model must reach
    max_drop_vs_teacher: float = 0.03  # largest accuracy loss allowed against the teacher
    max_drop_vs_student: float = 0.02  # ...and against the fp32 distilled student
    latency_batch: int = 1  # batch size at which models are compared and latency gated (one of bench.batch_sizes)
    latency_provider: str = "cpu"  # execution provider at which models are compared: cpu, cuda or tensorrt
    latency_tie: float = 0.1  # p50s within this fraction of the fastest count as equally fast (most accurate wins)
    max_latency_ms: float | None = None  # p90 limit at latency_batch on CPU; null: no latency gate
    latency_limits: tuple[
        str, ...
    ] = ()  # more latency gates, each "PROVIDER:BATCH:PERCENTILE<=MS", e.g. "cpu:64:p99<=20"
    min_speedup_vs_teacher: float | None = None  # teacher p50 / edge p50 at latency_batch; null: no gate
    max_size_bytes: int | None = None  # ONNX file size limit; null: no gate

    def __post_init__(self):
        for limit in self.latency_limits:
            parse_latency_limit(limit)
        require(0 <= self.min_accuracy <= 1, "signoff.min_accuracy", self.min_accuracy, "a number in [0, 1]")
        require(
            0 <= self.max_drop_vs_teacher <= 1,
            "signoff.max_drop_vs_teacher",
            self.max_drop_vs_teacher,
            "a number in [0, 1]",
        )
        require(
            0 <= self.max_drop_vs_student <= 1,
            "signoff.max_drop_vs_student",
            self.max_drop_vs_student,
            "a number in [0, 1]",
        )
        require(self.latency_batch >= 1, "signoff.latency_batch", self.latency_batch, "an integer >= 1")
        require(
            self.latency_provider in PROVIDERS, "signoff.latency_provider", self.latency_provider, ", ".join(PROVIDERS)
        )
        require(0 <= self.latency_tie < 1, "signoff.latency_tie", self.latency_tie, "a fraction in [0, 1)")
        require(
            self.max_latency_ms is None or self.max_latency_ms > 0,
            "signoff.max_latency_ms",
            self.max_latency_ms,
            "a number > 0 or null",
        )
        require(
            self.min_speedup_vs_teacher is None or self.min_speedup_vs_teacher > 0,
            "signoff.min_speedup_vs_teacher",
            self.min_speedup_vs_teacher,
            "a number > 0 or null",
        )
        require(
            self.max_size_bytes is None or self.max_size_bytes > 0,
            "signoff.max_size_bytes",
            self.max_size_bytes,
            "an integer > 0 or null",
        )


def reproduce_command(config: dict[str, dict[str, Any]], defaults: dict[str, dict[str, Any]]) -> str:
    """`edgeforge run` with a --set for every value that differs from the built-in defaults (every value of a
    section whose defaults are unknown: an entry cached before manifests recorded them)."""
    overrides = []
    for section, values in config.items():
        for key, value in values.items():
            if key not in defaults.get(section, {}) or value != defaults[section][key]:
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                overrides.append(f"--set {shlex.quote(f'{section}.{key}={text}')}")
    return " ".join(["edgeforge run", *overrides])


def with_budget_gate(params: Params, prune: dict[str, Any]) -> Params:
    """The latency budget the prune stage searched for, as one more latency gate on the edge model."""
    if prune.get("target_latency_ms") is None:
        return params
    limit = f"{prune['target_provider']}:{prune['target_batch']}:p50<={prune['target_latency_ms']!r}"
    return (
        params
        if limit in params.latency_limits
        else dataclasses.replace(params, latency_limits=(*params.latency_limits, limit))
    )


def check_measured(models: list[dict], params: Params, bench: dict) -> None:
    required = PROVIDERS[params.latency_provider][0]
    if any(required not in m["latency"] for m in models):
        why = bench["skipped_providers"].get(params.latency_provider, "not in bench.providers")
        raise StageError(f"report: signoff.latency_provider={params.latency_provider!r} was not measured: {why}")


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    bench = inputs["bench"].metrics
    models = [{**m, "path": f"cache/{m['stage']}/{m['key']}/{m['file']}"} for m in bench["models"]]
    params = with_budget_gate(params, inputs["prune"].manifest["params"])
    check_measured(models, params, bench)
    edge, passing = choose_edge_model(models, params)
    gates = signoff_gates(edge, models, params)
    report = {
        **run_facts(params, inputs),
        "models": models,
        **edge_decision(edge, passing, gates, models, params),
        **what_each_step_did(inputs),
    }
    shutil.copyfile(inputs[edge["stage"]].file(edge["file"]), out_dir / "model.onnx")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    (out_dir / "report.html").write_text(render_html(report))
    verdict = "PASSED" if report["signoff"]["passed"] else "FAILED"
    return {
        "edge_model": edge["name"],
        "signoff_passed": report["signoff"]["passed"],
        "failed_gates": [g["name"] for g in gates if not g["passed"]],
        "summary": f"edge model {edge['name']} ({edge['accuracy']:.4f}); sign-off {verdict}",
    }


def run_facts(params: Params, inputs: dict[str, Artifact]) -> dict[str, Any]:
    """The config, where the latencies were measured, the data and how to feed the model, and how to reproduce."""
    bench = inputs["bench"].metrics
    dataset = json.loads(inputs["data"].file("dataset.json").read_text())
    config = {inputs[name].manifest["section"]: inputs[name].manifest["params"] for name in INPUTS}
    config[SECTION] = params_to_dict(params)
    defaults = {inputs[name].manifest["section"]: inputs[name].manifest.get("defaults", {}) for name in INPUTS}
    defaults[SECTION] = params_to_dict(Params())
    return {
        "config": config,
        "environment": bench["environment"],
        "skipped_providers": bench["skipped_providers"],
        "session_options": bench["session_options"],
        "bench_method": bench["method"],
        "dataset": {
            **{k: dataset[k] for k in ("name", "class_names", "image_shape", "mean", "std", "preprocessing", "split")},
            **inputs["data"].manifest["external"],
        },
        "input": {"name": "input", "shape": ["batch", *dataset["image_shape"]], "dtype": "float32"},
        "reproduce": reproduce_command(config, defaults),
    }


def edge_decision(edge: dict, passing: list[str], gates: list[dict], models: list[dict], params: Params) -> dict:
    """Which model ships and why, and the sign-off verdict."""
    provider = PROVIDERS[params.latency_provider][0]
    reason = (
        f"the most accurate of the models within {params.latency_tie:.0%} of the fastest p50 at batch "
        f"{params.latency_batch} on {params.latency_provider}, among those passing the accuracy gates "
        f"({', '.join(passing)})"
        if passing
        else "no model passed the accuracy gates; the most accurate is named"
    )
    return {
        "edge_model": edge["name"],
        "edge_model_reason": reason,
        "signoff": {"passed": bool(passing) and all(g["passed"] for g in gates), "gates": gates},
        "edge_choice": {"batch": params.latency_batch, "provider": provider, "passing": passing},
        "pareto_front": pareto_front(models, str(params.latency_batch), provider),
    }


def what_each_step_did(inputs: dict[str, Artifact]) -> dict[str, Any]:
    """Distillation, pruning, quantization and the searches, as their stages recorded them, and training curves."""
    distill, prune_metrics, quantize_metrics = (inputs[name].metrics for name in ("distill", "prune", "quantize"))
    distill_params = inputs["distill"].manifest["params"]
    pruning_keys = ("params_before", "params", "macs_before", "macs", "test_accuracy_before_finetune", "test_accuracy")
    return {
        "distillation": {
            "student_accuracy": distill["test_accuracy"],
            "baseline_accuracy": distill["baseline_test_accuracy"],
            "temperature": distill_params["temperature"],
            "alpha": distill_params["alpha"],
        },
        "pruning": {key: prune_metrics[key] for key in pruning_keys},
        "quantization": quantize_metrics["arguments"],
        "quantization_search": {
            name: model["search"] for name, model in quantize_metrics["models"].items() if model["search"]
        },
        "latency_search": prune_metrics["latency_search"],
        "training": {
            "teacher": inputs["teacher"].metrics["history"],
            "student": distill["history"],
            "student_without_teacher": distill["baseline_history"],
            "pruned_finetune": prune_metrics["history"],
        },
        "export_tolerance": inputs["export"].metrics["tolerance"],
    }
