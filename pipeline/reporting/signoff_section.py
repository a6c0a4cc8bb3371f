"""The report's words on a failed sign-off: every model against the sign-off's gates, for report.md and report.html
alike (the gates: pipeline/reporting/gates.py)."""

from __future__ import annotations

import math
from typing import Any

from pipeline.reporting.gates import SPEEDUP_GATE, fastest_timing_ms
from pipeline.reporting.latency_search_sections import table

INTRO = (
    "The sign-off failed. Each model judged as the edge model would be (the same gates, on the test split; nothing "
    "is chosen on this table), with the gates it fails (none: it passes them on test, but the edge choice reads "
    "validation):"
)
HEADER = ["model", "validation", "test", "gates failed (value against limit)"]
# Models the run's error line names: on CIFAR-10 all five models once failed the same two latency gates and the line
# named each, the teacher (7.9x over the budget) first; report.md lists every model.
NEAREST_SHOWN = 3


def gate_number(value: Any) -> str:
    """A gate's limit or value as the report writes it (report.html's gates table too; None: not measured)."""
    if value is None:
        return "not measured"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"  # byte counts: 20,000 rather than 2e+04
    return f"{value:.4g}"


def failed_gate_text(gate: dict[str, Any]) -> str:
    return f"{gate['name']} {gate_number(gate['value'])} against {gate_number(gate['limit'])}"


def _failing(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """signoff.failed_by_model of a failed sign-off ({} when it passed, or the report predates the record)."""
    return {} if report["signoff"]["passed"] else report["signoff"].get("failed_by_model") or {}


def failing_rows(report: dict[str, Any]) -> list[list[str]]:
    """A row per model, fewest failed gates first, then nearest to passing (as nearest_text orders them; [] when the
    sign-off passed or the report predates the record)."""
    failing = _failing(report)
    if not failing:
        return []
    models = sorted(report["models"], key=lambda m: nearest_first(failing[m["name"]]))
    return [
        [
            m["name"],
            f"{m['validation_accuracy']:.4f}",
            f"{m['accuracy']:.4f}",
            "; ".join(failed_gate_text(g) for g in failing[m["name"]]) or "none",
        ]
        for m in models
    ]


def shortfall(gate: dict[str, Any]) -> float:
    """How far past its limit a failed gate is, as a factor (1.3: 30% past it); infinite where it was not measured
    or its limit or value is 0. All gates are named min_ or max_ (pipeline/reporting/gates.py)."""
    value, limit = gate["value"], gate["limit"]
    if not value or not limit:
        return math.inf
    return value / limit if gate["name"].startswith("max_") else limit / value


def nearest_first(gates: list[dict[str, Any]]) -> tuple[int, float]:
    """A model's place among those failing, from the gates it fails: fewest first, then by the shortfall of the gate
    it misses by most (0 when it misses none)."""
    return len(gates), max((shortfall(gate) for gate in gates), default=0.0)


def nearest_text(report: dict[str, Any]) -> str:
    """The models that fail the fewest gates, nearest to passing first (by the shortfall of the gate each misses
    most), at most NEAREST_SHOWN, each with those gates and, where it misses a latency gate and its timing moved
    within the bench, by how much (what it missed by may owe to the machine): the stage's summary and the run's
    error line ('' when the sign-off passed)."""
    failing = _failing(report)
    if not failing:
        return ""
    fewest = min(len(gates) for gates in failing.values())
    group = sorted(
        (name for name, gates in failing.items() if len(gates) == fewest), key=lambda n: nearest_first(failing[n])
    )
    moved = {m["name"]: m["change"] for m in report.get("timing_moved") or []}

    def text(name: str) -> str:
        said = ", ".join(map(failed_gate_text, failing[name])) or "passes every gate on the test split"
        latency = any(gate["name"].startswith(("max_latency_", SPEEDUP_GATE)) for gate in failing[name])
        if latency and name in moved:
            said += f"; its rounds timed {moved[name]:+.0%} against its settings search"
        return f"{name} ({said})"

    left = len(group) - NEAREST_SHOWN
    return "; ".join(map(text, group[:NEAREST_SHOWN])) + (f"; {left} more" if left > 0 else "")


def budget_hint(report: dict[str, Any]) -> str:
    """On a sign-off failed by its speed-up gate when the prune stage had no latency budget, the budget that has it
    search for a model that fast on the same target, as a speed-up (the prune stage times the teacher on the machine
    it runs on) with what it comes to here in ms ('' otherwise). A fixed prune.ratio promises no speed-up: the
    CIFAR-10 profile's 25% prune measured 5.64x the teacher on one CPU and 3.73x on another (BENCHMARKS.md)."""
    failed = [g for g in report["signoff"]["gates"] if g["name"].startswith(SPEEDUP_GATE) and not g["passed"]]
    if not failed:
        return ""
    prune, signoff = report["config"]["prune"], report["config"]["signoff"]
    # A budget was searched for (in ms, or as a speed-up, absent from reports made before it): the gate and the
    # budget disagree, or the search missed it; the report's search section says which.
    if prune["target_latency_ms"] is not None or prune.get("target_speedup_vs_teacher") is not None:
        return ""
    batch, provider = signoff["latency_batch"], signoff["latency_provider"]
    gate_target = (batch, provider, report["latency_target"]["name"])
    if (prune["target_batch"], prune["target_provider"], prune["target_device"]) != gate_target:
        return ""  # the prune stage times another target than the gate's: a budget for it would be a guess
    teacher = next(m for m in report["models"] if m["name"] == "teacher")
    speedup = failed[0]["limit"]
    budget_ms = fastest_timing_ms(teacher, batch, provider) / speedup  # the prune stage reads the teacher's fastest
    return (
        f"no latency budget was searched for: --set prune.target_speedup_vs_teacher={speedup:g} has the prune stage "
        f"time the teacher and search for a model that fast (here {budget_ms:.4g} ms, the teacher's fastest timing "
        f"in this bench / {speedup:g}; prune.target_latency_ms sets it in ms)"
    )


def failing_lines(report: dict[str, Any]) -> list[str]:
    """report.md's section ([] when the sign-off passed)."""
    rows = failing_rows(report)
    if not rows:
        return []
    hint = budget_hint(report)
    return ["", "### Every model against the gates", "", INTRO, "", *table(HEADER, rows), *(["", hint] if hint else [])]
