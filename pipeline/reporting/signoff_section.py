"""The report's words on a failed sign-off: every model against the sign-off's gates, for report.md and report.html
alike (the gates: pipeline/reporting/gates.py)."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.latency_search_sections import table

INTRO = (
    "The sign-off failed. Each model judged as the edge model would be (the same gates, on the test split; nothing "
    "is chosen on this table), with the gates it fails (none: it passes them on test, but the edge choice reads "
    "validation):"
)
HEADER = ["model", "validation", "test", "gates failed (value against limit)"]


def failed_gate_text(gate: dict[str, Any]) -> str:
    return f"{gate['name']} {_number(gate['value'])} against {_number(gate['limit'])}"


def _number(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"  # byte counts: 20,000 rather than 2e+04
    return f"{value:.4g}"


def failing_rows(report: dict[str, Any]) -> list[list[str]]:
    """A row per model, fewest failed gates first ([] when the sign-off passed or the report predates the record)."""
    failing = report["signoff"].get("failed_by_model")
    if report["signoff"]["passed"] or not failing:
        return []
    models = sorted(report["models"], key=lambda m: len(failing[m["name"]]))
    return [
        [
            m["name"],
            f"{m['validation_accuracy']:.4f}",
            f"{m['accuracy']:.4f}",
            "; ".join(failed_gate_text(g) for g in failing[m["name"]]) or "none",
        ]
        for m in models
    ]


def nearest_text(report: dict[str, Any]) -> str:
    """The models that fail the fewest gates, each with those gates, for the stage's summary and the run's error line
    ('' when the sign-off passed)."""
    failing = report["signoff"].get("failed_by_model")
    if report["signoff"]["passed"] or not failing:
        return ""
    fewest = min(len(gates) for gates in failing.values())
    nearest = [
        f"{name} ({', '.join(map(failed_gate_text, gates)) or 'passes every gate on the test split'})"
        for name, gates in failing.items()
        if len(gates) == fewest
    ]
    return "; ".join(nearest)


def failing_lines(report: dict[str, Any]) -> list[str]:
    """report.md's section ([] when the sign-off passed)."""
    rows = failing_rows(report)
    if not rows:
        return []
    return ["", "### Every model against the gates", "", INTRO, "", *table(HEADER, rows)]
