"""prune.target_speedup_vs_teacher: the latency budget as the teacher's timing on the prune target divided by a
factor, measured on the machine that runs the search, so a profile can ask for "5x the teacher" on any CPU. A budget
in milliseconds holds for one machine: the CIFAR-10 profile's fixed 25% prune measured 5.64x the teacher on an AMD
EPYC and 3.73x on a Xeon (BENCHMARKS.md), and its 5x sign-off gate failed on the second.

The teacher is timed as the bench stage times it for signoff.min_speedup_vs_teacher: its fp32 ONNX at its own
fastest session settings (or prune.target_threads, which bench.threads must then be: stages/__init__.py), at
prune.target_batch on prune.target_provider and prune.target_device, in at least TEACHER_REPEATS sessions
(prune.search_repeats if more), prune.retime_gap_s apart, each giving a p50. The budget is the fastest of those p50s
/ target_speedup_vs_teacher, and everything downstream (the search, its margin, the report's budget gate) reads it
as if prune.target_latency_ms had been set to it. The fastest, not the median: on a 2-core VM the 2-thread
teacher's timing switched between about 0.42 and 0.60 ms from one session to the next, and the prune stage once
took 0.5996 ms (a budget 1.46x too loose) where the bench's fastest timings of the same teacher stayed at
0.41-0.44 ms; a process beside it can slow a timing, not speed it up, and the sign-off on signoff.latency_basis
bound reads the teacher's fastest timing in the bench too (BENCHMARKS.md).
Weights do not change latency: `edgeforge floor` times an untrained teacher, before anything trains. Before the
alternatives are decided, the stage times the teacher again (before_alternatives): they and the choice of what
ships meet the fastest of all its timings.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline.cache import CHECKPOINTS, ArtifactStore
from pipeline.datasets.artifact import Dataset
from pipeline.errors import StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import load_model
from pipeline.search import prune_budget
from pipeline.training import distributed, onnx_teacher
from pipeline.training.recipes import spec_for

log = logging.getLogger(__name__)

SAVED = "teacher-budget.json"  # the teacher's measurement, in the work directory's checkpoints
SAVED_AGAIN = "teacher-budget-again.json"  # its timing before the alternatives are decided (before_alternatives)
TEACHER_REPEATS = 5  # sessions the teacher is timed in at least: its budget reads the fastest
FLOOR_CHECK = "timed by the run's floor check before the student trained"  # "timed_by": the floor check's keeping


def measured(model: nn.Module | None, spec: ModelSpec | None, onnx_path: Path | None, dataset: Dataset, prune: Any):
    """{"fastest_ms", "p50_ms", "runs_ms", "settings", "speedup", "budget_ms"}: the teacher (a PyTorch `model` with
    its `spec`, exported here, or the ONNX file at `onnx_path`) timed in fp32 (runs_ms: each session's p50; p50_ms
    their median, fastest_ms their minimum) and the budget it gives (fastest_ms / the factor)."""
    fp32 = dataclasses.replace(prune, target_format="fp32")  # the teacher is benched in fp32 only
    measure = prune_budget.candidates(model, spec, dataset, fp32)
    try:
        exported = measure.export(model) if onnx_path is None else {"paths": {"fp32": onnx_path}}
        # The first measurement searches the session settings; the others re-time the file at those, each after a
        # wait of prune.retime_gap_s: five sessions back to back once all fell in one slow episode (0.54-0.56 ms,
        # where a probe 12 minutes before had timed the same teacher at 0.42): a budget of 0.0901 ms, where the two
        # runs after it, their sessions 10 s apart, had 0.0806 and 0.0720 (BENCHMARKS.md, "A host at two speeds").
        runs = []
        for _ in range(max(prune.search_repeats, TEACHER_REPEATS)):
            if runs:
                time.sleep(prune.retime_gap_s)
            runs.append(measure.time({"macs": None, "params": None, **exported}))
    finally:
        measure.close()
    runs_ms = [run["fp32_ms"] for run in runs]
    return {
        "fastest_ms": min(runs_ms),
        "p50_ms": float(np.median(runs_ms)),
        "runs_ms": runs_ms,
        "settings": runs[0]["fp32_settings"],
        "speedup": prune.target_speedup_vs_teacher,
        "budget_ms": min(runs_ms) / prune.target_speedup_vs_teacher,
    }


def of_artifact(teacher_dir: Path, dataset: Dataset, prune: Any) -> dict[str, Any]:
    """measured() for the teacher stage's model: its PyTorch model, or its ONNX file (teacher.onnx)."""
    if onnx_teacher.is_onnx_teacher(teacher_dir):
        return measured(None, None, Path(teacher_dir) / onnx_teacher.FILE, dataset, prune)
    return measured(*load_model(teacher_dir), None, dataset, prune)


def untrained(teacher: Any, dataset: Dataset, prune: Any) -> dict[str, Any]:
    """measured() for the teacher the teacher section builds, with untrained weights: `edgeforge floor`'s budget,
    before anything trains (an ONNX teacher is the teacher stage's file: see runner.student_floors)."""
    spec = spec_for(dataset, teacher.model, teacher.width)
    return {**measured(build_model(spec), spec, None, dataset, prune), "weights": "untrained"}


def kept_for_prune(store: ArtifactStore, key: str, teacher_dir: Path, dataset: Dataset, prune: Any) -> dict[str, Any]:
    """of_artifact() for the run's floor check, kept in the checkpoints of the prune stage's work directory (stage key
    `key`), where applied() finds it: the prune stage then searches for the budget the floor check passed, instead of
    timing the teacher again after the student has trained (0.41 against 0.60 ms on one VM, BENCHMARKS.md). A
    measurement kept there already (an earlier floor check, a killed prune stage) is the budget. While another
    process runs that prune stage (its lock held) the teacher is timed and nothing is kept."""

    def measure() -> dict[str, Any]:
        return {**of_artifact(teacher_dir, dataset, prune), "timed_by": FLOOR_CHECK}

    try:
        with store.locked("prune", key, wait=False):
            return prune_budget.kept_json(store.temp_dir("prune", key) / CHECKPOINTS / SAVED, measure)
    except StageError:  # the prune stage is running elsewhere: its own timing is its budget
        return measure()


def applied(prune: Any, teacher_dir: Path, dataset: Dataset, out_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """The prune stage's params with a speed-up target resolved to milliseconds, and the teacher's measurement (None
    without one). Under torchrun the leader times the teacher (ranks timing at once would slow each other).

    The measurement is kept in the work directory's checkpoints, as the searches' decisions are: a run killed after
    its searches resumes with the budget they were made for. Timed again, the teacher can come out 1.46x apart on
    this VM (0.5996 against 0.4094 ms, BENCHMARKS.md), and the saved decisions would answer another budget."""
    if prune.target_speedup_vs_teacher is None:
        return prune, None
    saved = out_dir / CHECKPOINTS / SAVED
    kept = saved.is_file()
    leader = distributed.is_leader()
    timed = prune_budget.kept_json(saved, lambda: of_artifact(teacher_dir, dataset, prune)) if leader else None
    teacher = distributed.broadcast_json(timed)
    when = f", as {teacher.get('timed_by', 'timed before this run was stopped')}" if kept else ""
    log.info("prune: %s%s", summary(teacher).removesuffix("; "), when)  # said before the search: it takes minutes
    return resolved(prune, teacher), teacher


def before_alternatives(
    prune: Any, teacher: dict[str, Any] | None, teacher_dir: Path, dataset: Dataset, out_dir: Path
) -> tuple[Any, dict[str, Any] | None]:
    """The teacher timed again (of_artifact, in as many sessions) before the alternatives and the shipping decision,
    and the budget those decisions meet: the fastest of every timing of it in this stage over the factor
    (`pooled`). `prune`: the params resolved by applied(), `teacher` its measurement; (prune, None) unchanged without
    a speed-up target.

    The budget is the fastest the teacher runs here, and the bench gates the edge model against its own fastest
    timing of it. Five sessions at the start of the stage can all miss the host's fast episodes: on the CIFAR-10
    profile they timed 0.4626 ms at their fastest where the bench's fastest, an hour later, was 0.4074 ms, 12% apart;
    resnet8_s2 x24 shipped at 0.0732 ms against the stage's 0.0771 ms budget and failed the bench's 0.0679 ms gate
    (BENCHMARKS.md, "The profile at prune VERSION 25"). The more often the teacher is timed the nearer its fastest
    timing comes to the bench's, and the decisions that ship are the ones that must hold there. Kept in the work
    directory's checkpoints, as applied()'s: a resumed run decides against the budget it trained for."""
    if teacher is None:
        return prune, None
    asked = dataclasses.replace(prune, target_latency_ms=None, target_speedup_vs_teacher=teacher["speedup"])
    saved = out_dir / CHECKPOINTS / SAVED_AGAIN
    leader = distributed.is_leader()
    timed = prune_budget.kept_json(saved, lambda: of_artifact(teacher_dir, dataset, asked)) if leader else None
    teacher = pooled(teacher, distributed.broadcast_json(timed))
    again = teacher["before_alternatives"]
    log.info(
        "prune: the teacher timed again before the alternatives: %s ms; budget %.4g ms (was %.4g)",
        ", ".join(f"{ms:.4f}" for ms in again["runs_ms"]),
        again["budget_ms"],
        teacher["budget_ms"],
    )
    return dataclasses.replace(prune, target_latency_ms=again["budget_ms"]), teacher


def pooled(teacher: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """`teacher` (measured(): the budget the searches aimed at) with "before_alternatives": the sessions of `again`
    (measured() later in the stage), and the fastest of both measurements' timings and its budget, which the
    alternatives and the shipping decision meet. A slower timing later leaves the budget as it was: a process beside
    the teacher can slow it, not speed it up."""
    fastest_ms = min(teacher["fastest_ms"], again["fastest_ms"])
    return {
        **teacher,
        "before_alternatives": {
            "runs_ms": again["runs_ms"],
            "settings": again["settings"],
            "fastest_ms": fastest_ms,
            "budget_ms": fastest_ms / teacher["speedup"],
        },
    }


def resolved(prune: Any, teacher: dict[str, Any] | None) -> Any:
    """The prune params with the budget in milliseconds that `teacher` (measured()) gave, as if the user had set it;
    unchanged without a speed-up target (teacher None)."""
    if teacher is None:
        return prune
    return dataclasses.replace(prune, target_latency_ms=teacher["budget_ms"], target_speedup_vs_teacher=None)


def summary(teacher: dict[str, Any] | None) -> str:
    if teacher is None:
        return ""
    again = teacher.get("before_alternatives")
    return (
        f"budget {teacher['budget_ms']:.4g} ms: the teacher's fastest timing {teacher['fastest_ms']:.4g} ms (of "
        f"{len(teacher['runs_ms'])}) / "
        f"prune.target_speedup_vs_teacher {teacher['speedup']:g}; "
    ) + ("" if again is None else f"{again['budget_ms']:.4g} ms before the alternatives (the teacher timed again); ")
