"""The prune stage's latency budget as a sign-off gate (the report stage's): a budget in ms as it was set, a budget
relative to the teacher (prune.target_speedup_vs_teacher) at the teacher's timing in the same bench as the edge
model's, so that the gate is a ratio taken in one run; and the sentence the reports say it in (budget_source)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.reporting.gates import fastest_timing_ms, p


def with_budget_gate(params: Any, prune: dict[str, Any], from_teacher: dict[str, Any] | None) -> Any:
    """The signoff `params` (the report stage's Params) with the latency budget the prune stage searched for as one
    more latency gate on the edge model: in ms as set, or for prune.target_speedup_vs_teacher the teacher's timing
    in this bench over the factor (`from_teacher`, from in_this_bench)."""
    budget_ms = prune.get("target_latency_ms") if from_teacher is None else from_teacher["gate_ms"]
    if budget_ms is None:
        return params
    limit = f"{prune['target_provider']}:{prune['target_batch']}:p50<={budget_ms!r}"
    return (
        params
        if limit in params.latency_limits
        else dataclasses.replace(params, latency_limits=(*params.latency_limits, limit))
    )


def in_this_bench(
    from_teacher: dict[str, Any] | None, prune: dict[str, Any], models: list[dict], basis: str = "point"
) -> dict | None:
    """The prune stage's budget_from_teacher with the budget the sign-off gates: the teacher's p50 in this bench
    (at the prune target's batch and provider) over the same factor ("bench_p50_ms", "gate_ms"), or with
    signoff.latency_basis `bound` its fastest timing in this bench ("bench_fastest_ms", gates.fastest_timing_ms).
    The gate is then a ratio taken in one run, as the speed-up gate's: the prune stage timed the teacher minutes to
    an hour earlier, and on a 2-core VM one teacher measured 0.4094 ms there and 0.4511 ms in the bench of the same
    run (BENCHMARKS.md). None without a speed-up budget."""
    if from_teacher is None:
        return None
    teacher = next(m for m in models if m["name"] == "teacher")
    batch, provider = prune["target_batch"], prune["target_provider"]
    record = {**from_teacher, "bench_p50_ms": p(teacher, batch, "p50_ms", provider)}
    if basis == "bound":
        record["bench_fastest_ms"] = fastest_timing_ms(teacher, batch, provider)
    return {**record, "gate_ms": record.get("bench_fastest_ms", record["bench_p50_ms"]) / from_teacher["speedup"]}


def budget_source(from_teacher: dict[str, Any] | None) -> str:
    """How the prune stage set its budget from the teacher (prune.target_speedup_vs_teacher) and how the sign-off
    gates it, '' without it. `from_teacher`: in_this_bench's record, or the prune stage's alone (reports before
    VERSION 30); its "fastest_ms" from prune VERSION 23 on (before: the median, "p50_ms")."""
    if from_teacher is None:
        return ""
    runs = ", ".join(f"{run:.4f}" for run in from_teacher["runs_ms"])
    statistic, value, which = (
        ("fastest fp32 timing", from_teacher["fastest_ms"], "the lowest p50")
        if "fastest_ms" in from_teacher
        else ("fp32 p50", from_teacher["p50_ms"], "the median")
    )
    searched = (
        f" The budget is the teacher's {statistic} here, {value:.4f} ms ({which} of {runs} ms at "
        f"{from_teacher['settings']}), over prune.target_speedup_vs_teacher {from_teacher['speedup']:g}."
    )
    searched += timed_again(from_teacher.get("before_alternatives"))
    if "gate_ms" not in from_teacher:
        return searched
    bound = "bench_fastest_ms" in from_teacher  # signoff.latency_basis: bound
    gated = (
        f" The sign-off gates the edge model's slowest kept round against the teacher's fastest timing in the bench, "
        f"{from_teacher['bench_fastest_ms']:.4f} ms (p50 {from_teacher['bench_p50_ms']:.4f} ms)"
        if bound
        else f" The sign-off gates the edge model against the teacher's p50 in the bench, "
        f"{from_teacher['bench_p50_ms']:.4f} ms"
    )
    return f"{searched}{gated}, over the same factor: {from_teacher['gate_ms']:.4g} ms, a ratio taken in one run" + (
        " at its end worst for the edge model." if bound else "."
    )


def timed_again(again: dict[str, Any] | None) -> str:
    """The teacher's timing before the alternatives were decided (prune VERSION 27), '' without one."""
    if again is None:
        return ""
    runs = ", ".join(f"{run:.4f}" for run in again["runs_ms"])
    return (
        f" Timed again before the alternatives were decided ({runs} ms at {again['settings']}): the fastest of all "
        f"its timings, {again['fastest_ms']:.4f} ms, gave the budget they and the shipping decision met, "
        f"{again['budget_ms']:.4g} ms."
    )


def budget_key(from_teacher: dict[str, Any] | None) -> str:
    return "prune.target_latency_ms" if from_teacher is None else "prune.target_speedup_vs_teacher"
