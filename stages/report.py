"""report: pick the edge model, evaluate the sign-off gates, write report.json, report.md and model.onnx.

The edge model is the fastest model (p50 at `signoff.latency_batch` on `signoff.latency_provider`, measured on
`signoff.latency_target`) among those that pass the accuracy gates, unless one as good as equally fast (within
`signoff.latency_tie`, or within every latency limit) is more accurate beyond the validation noise
(pipeline/reporting/gates.py); int8 is not assumed faster. A latency budget (prune.target_latency_ms) becomes a
latency gate on the edge model (`PROVIDER:BATCH:p50<=BUDGET` in the report's signoff.latency_limits). If no model
passes the accuracy gates, the most accurate one is named and the sign-off fails. The runner copies this stage's
files to `artifacts/release/`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.cache import Artifact
from pipeline.config import params_to_dict, reproduce_command
from pipeline.errors import StageError, require
from pipeline.reporting import release
from pipeline.reporting.budget_gate import in_this_bench, with_budget_gate
from pipeline.reporting.gates import (
    choose_edge_model,
    edge_reason,
    gates_each_model_fails,
    pareto_front,
    parse_latency_limit,
    signoff_gates,
)
from pipeline.reporting.markdown import render_markdown
from pipeline.reporting.signoff_section import budget_hint, nearest_text
from pipeline.reporting.steps import CHOICES, what_each_step_did
from pipeline.reporting.timing_moved import moved_timings
from pipeline.runtime.device import MEASURED
from pipeline.runtime.timing import PROVIDER_NAMES, is_provider, provider_name

NAME = "report"
SECTION = "signoff"
# 16: within the latency limits the more accurate model beyond the noise ships (accurate_within_limits)
# 17: the pruning section says whether the fine-tuned or the from-scratch pruned model shipped, and why
# 18: the pruning section names the residual blocks prune.drop_blocks removed, and how each was chosen; the edge
# choice's reason says "the fastest and those within every latency limit" (the fastest may be over them)
# 19: with prune.drop_blocks auto, a table of every depth tried ("Depth against the budget")
# 20: report.html shows the candidates each search timed again in interleaved rounds (plateau, confirmed), as
#     report.md does; report.md's uniform arm shows its plateau rounds too
# 21: on a failed sign-off, every model against the gates (signoff.failed_by_model) and the closest in the summary
# 22: prune.alternatives: each network in report.md and report.html, the choice in the choices table, and a "Pruned:"
#     sentence under the models table when the model called pruned is one of them
# 23: auto's widths of the stride-2 variant, each timed untrained, beside its row and line
# 24: the prune fine-tune's epochs beside the scratch baseline's, and what those were set against
# 25: what set the scratch baseline's epochs read from the config (it misread prune.step_epochs runs)
# 26: each alternative on labels alone beside it (distill.baseline), and which of the two is kept
# 27: which of the student's runs is the student (distill VERSION 3: "kept"), in the models' intro and the steps
# 28: a failed speed-up gate with no prune budget names the budget to search for
# 29: prune.target_speedup_vs_teacher: its budget gated from the prune stage's metrics, the teacher's p50 said
# 30: the speed-up budget's gate is the teacher's p50 in this bench over the factor (in_this_bench)
# 31: "timing_moved": models whose settings search and rounds disagree by more than 25%, said in report.md/html
# 32: signoff.latency_basis (bound: the speed-up and latency gates read the bench's worst timings for the edge
#     model); every latency gate says what it compares
# 33: a bound latency gate names the point value beside it (the speed-up: both timings and p50 over p50); the
#     reproduce command leaves out the gate a prune budget adds (a relative one's was this bench's, and stuck)
# 34: "timed_again" in the pruning section: the prune stage's timings over the budget taken again, listed
# 35: a bound p95 or p99 latency gate reads the upper end of its 95% interval (bench VERSION 9), or the slowest run
#     where the runs are too few for one
# 36: an alternative held to the search's limit says so (its "limit_ms", prune VERSION 26)
# 37: the teacher timed again before the alternatives (prune VERSION 27) said with the budget; each alternative's
#     budget in ms
# 38: the arms' choice said as within the search's limit first (prune VERSION 28)
# 39: the bench's check of a several-thread setting against one thread (bench VERSION 10) said under the latencies
# 40: the prune stage's thread probe ("thread_probe"), said after the latency search's method
# 41: "closest_to_passing" names at most three models, nearest to their limits first, and says a moved timing;
#     "Every model against the gates" orders models failing as many gates the same way
VERSION = 41
INPUTS = ("data", "teacher", "distill", "prune", "export", "quantize", "bench")
TRAINS = False
OUTPUTS = ("report.json", "report.md", "report.html", "model.onnx", "deploy.json", "labels.txt", "predict.py")


@dataclasses.dataclass(frozen=True)
class Params:
    # Accuracy gates: a candidate for the edge model must pass them on the validation split, the edge model on the
    # test split. point: they compare accuracies; bound: the end of each 95% interval that is worst for the model.
    min_accuracy: float = 0.9  # accuracy the edge model must reach
    max_drop_vs_teacher: float = 0.03  # largest accuracy loss allowed against the teacher
    max_drop_vs_student: float = 0.02  # ...and against the fp32 student (distill stage)
    accuracy_basis: str = "point"  # point or bound
    # Latency gates and the speed-up gate. point: percentiles of the pooled runs (p50 over p50 for the speed-up);
    # bound: the end of the bench's timings worst for the edge model (pipeline/reporting/gates.py): its slowest kept
    # round for a p50, against the teacher's fastest timing in the bench for the speed-up and a relative budget.
    latency_basis: str = "point"
    latency_batch: int = 1  # batch size at which models are compared and latency gated (one of bench.batch_sizes)
    latency_provider: str = "cpu"  # execution provider at which models are compared: cpu, cuda, openvino, ...
    latency_target: str | None = None  # where models are compared and gated: one of bench.targets; null: the first
    # The fastest model passing the accuracy gates (on validation) is the edge model; p50s within this fraction of
    # the fastest count as equally fast, and a slower one of those wins if more accurate beyond the validation noise.
    latency_tie: float = 0.0
    # With latency limits (latency_limits, a prune budget, max_latency_ms), every model within all of them counts as
    # fast enough: a slower one of those wins if more accurate beyond the validation noise. false: speed alone.
    accurate_within_limits: bool = True
    max_latency_ms: float | None = None  # p90 limit at latency_batch on CPU; null: no latency gate
    latency_limits: tuple[
        str, ...
    ] = ()  # more latency gates, each "PROVIDER:BATCH:PERCENTILE<=MS", e.g. "cpu:64:p99<=20"
    min_speedup_vs_teacher: float | None = None  # teacher p50 / edge p50 at latency_batch; null: no gate
    max_size_bytes: int | None = None  # ONNX file size limit; null: no gate
    max_memory_mb: float | None = None  # peak resident memory of a fresh process running the edge model; null: none

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
        require(
            self.accuracy_basis in ("point", "bound"), "signoff.accuracy_basis", self.accuracy_basis, "point or bound"
        )
        require(self.latency_basis in ("point", "bound"), "signoff.latency_basis", self.latency_basis, "point or bound")
        require(self.latency_batch >= 1, "signoff.latency_batch", self.latency_batch, "an integer >= 1")
        require(is_provider(self.latency_provider), "signoff.latency_provider", self.latency_provider, PROVIDER_NAMES)
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
        require(
            self.max_memory_mb is None or self.max_memory_mb > 0,
            "signoff.max_memory_mb",
            self.max_memory_mb,
            "a number of megabytes > 0 or null",
        )


def latency_target(params: Params, bench: dict) -> str:
    """Where models are compared and gated: signoff.latency_target, or the first of bench.targets."""
    target = params.latency_target or next(iter(bench["targets"]))
    if target not in bench["targets"]:
        raise StageError(
            f"report: signoff.latency_target={target!r} was not measured: add it to bench.targets "
            f"(now {list(bench['targets'])})"
        )
    return target


def on_target(model: dict[str, Any], target: str) -> dict[str, Any]:
    """The model with the latency, settings and memory measured on `target` (and the test accuracy computed there,
    when bench.target_accuracy asked for it, as `target_test_accuracy`)."""
    measured = model["targets"][target]
    return {
        **model,
        **{key: measured[key] for key in MEASURED},
        "target_test_accuracy": measured.get("test_accuracy"),
    }


def check_measured(models: list[dict], params: Params, bench: dict, target: str) -> None:
    required = provider_name(params.latency_provider)
    if any(required not in m["latency"] for m in models):
        skipped = bench["skipped_by_target"][target]
        why = skipped.get(params.latency_provider, "not in bench.providers")
        raise StageError(
            f"report: signoff.latency_provider={params.latency_provider!r} was not measured on {target}: {why}"
        )


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    bench = inputs["bench"].metrics
    target = latency_target(params, bench)
    models = [{**on_target(m, target), "path": f"cache/{m['stage']}/{m['key']}/{m['file']}"} for m in bench["models"]]
    prune = inputs["prune"].manifest["params"]
    check_measured(models, params, bench, target)
    from_teacher = in_this_bench(
        inputs["prune"].metrics.get("budget_from_teacher"), prune, models, params.latency_basis
    )
    asked, params = params, with_budget_gate(params, prune, from_teacher)
    edge, passing, tied = choose_edge_model(models, params)
    gates = signoff_gates(edge, models, params)
    report = {
        **run_facts(params, asked, inputs, target),
        "models": models,
        **edge_decision(edge, passing, tied, gates, models, params),
        **what_each_step_did(inputs),
        # prune.target_speedup_vs_teacher: the prune stage's timing of the teacher and this bench's (None: no such
        # budget)
        "budget_from_teacher": from_teacher,
        # the prune stage's thread probe: the thread count its candidates were timed at, and why (None: none ran)
        "thread_probe": inputs["prune"].metrics.get("thread_probe"),
        # models the settings search and the rounds timed far apart: ratios against them are as uncertain
        "timing_moved": moved_timings(models, params.latency_batch, params.latency_provider),
    }
    shutil.copyfile(inputs[edge["stage"]].file(edge["file"]), out_dir / "model.onnx")
    release.write(out_dir, edge, report, inputs["data"].manifest["params"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    # Imported here: matplotlib, which draws its plots, takes a third of a second to import and only this needs it.
    from pipeline.reporting.html import render_html

    (out_dir / "report.html").write_text(render_html(report))
    verdict = "PASSED" if report["signoff"]["passed"] else "FAILED"
    return {
        "edge_model": edge["name"],
        "signoff_passed": report["signoff"]["passed"],
        "failed_gates": [g["name"] for g in gates if not g["passed"]],
        # on a failed sign-off, the models that fail the fewest gates, with those gates: the run's error line says it
        "closest_to_passing": nearest_text(report),
        "budget_hint": budget_hint(report),  # a failed speed-up gate and no prune budget: the budget to search for
        "summary": f"edge model {edge['name']} (validation {edge['validation_accuracy']:.4f}, test "
        f"{edge['accuracy']:.4f}); sign-off {verdict}",
    }


def run_facts(params: Params, asked: Params, inputs: dict[str, Artifact], target: str) -> dict[str, Any]:
    """The config (`params`: the signoff section with the prune budget's gate, which `edgeforge signoff` re-checks),
    where the latencies were measured, the data and how to feed the model, and how to reproduce: with the signoff
    section as it was asked for (`asked`), since a budget relative to the teacher is gated at this bench's timing of
    it and a run that reproduces this one gates it at its own."""
    bench = inputs["bench"].metrics
    dataset = json.loads(inputs["data"].file("dataset.json").read_text())
    config = {inputs[name].manifest["section"]: inputs[name].manifest["params"] for name in INPUTS}
    config[SECTION] = params_to_dict(params)
    defaults = {inputs[name].manifest["section"]: inputs[name].manifest.get("defaults", {}) for name in INPUTS}
    defaults[SECTION] = params_to_dict(Params())
    return {
        "config": config,
        "environment": bench["environment"],  # this machine's, where the pipeline ran
        "latency_target": {"name": target, "environment": bench["targets"][target]},
        "targets": bench["targets"],  # every target's environment; each model's "targets" has its measurements
        "skipped_providers": bench["skipped_by_target"][target],
        "machine": bench["machine"],
        "bench_method": bench["method"],
        "dataset": {
            **{k: dataset[k] for k in ("name", "class_names", "image_shape", "mean", "std", "preprocessing", "split")},
            **inputs["data"].manifest["external"],
        },
        "input": {"name": "input", "shape": ["batch", *dataset["image_shape"]], "dtype": "float32"},
        # teacher.onnx: the user's file, its signature and the preprocessing it expects (null: a PyTorch teacher)
        "teacher_onnx": inputs["teacher"].metrics.get("onnx"),
        # how the teacher came to be (trained, fine-tuned from weights, used as it is) and the hashes of its inputs
        "teacher_origin": {"summary": inputs["teacher"].metrics["summary"], **inputs["teacher"].manifest["external"]},
        "reproduce": reproduce_command({**config, SECTION: params_to_dict(asked)}, defaults),
    }


def edge_decision(
    edge: dict, passing: list[str], tied: list[str], gates: list[dict], models: list[dict], params: Params
) -> dict:
    """Which model ships and why, the sign-off verdict, and the split every choice of the run was made on."""
    provider = provider_name(params.latency_provider)
    return {
        "edge_model": edge["name"],
        "edge_model_reason": edge_reason(edge, passing, tied, params),
        "signoff": {
            "passed": bool(passing) and all(g["passed"] for g in gates),
            "gates": gates,
            "failed_by_model": gates_each_model_fails(models, params),  # what stands between each model and a pass
        },
        "edge_choice": {
            "batch": params.latency_batch,
            "provider": provider,
            "split": "validation",
            "passing": passing,
            "tied": tied,
        },
        "pareto_front": pareto_front(models, str(params.latency_batch), provider),
        "choices": CHOICES,
    }
