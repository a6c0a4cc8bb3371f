"""`edgeforge signoff`: re-check a report's sign-off from its own numbers.

`recheck_signoff(report, params_class)` recomputes the edge model and every gate with the report stage's own rules
(pipeline.reporting.gates) from the report's models and `config.signoff`, instead of trusting the stored verdicts.
`params_class` is the signoff section's params dataclass (the CLI passes the report stage's), which checks the
stored config and fills in keys an older report lacks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline.errors import ConfigError
from pipeline.reporting.compare import is_number, lookup, validate_report
from pipeline.reporting.gates import choose_edge_model, gates_each_model_fails, signoff_gates
from pipeline.reporting.signoff_section import nearest_text
from pipeline.reporting.timing_moved import moved_timings
from pipeline.runtime.timing import provider_name

BEFORE_THEIR_TIME = {"accurate_within_limits": False}  # reports before VERSION 16 chose by speed alone


def recheck_signoff(report: dict[str, Any], params_class: type, source: str = "report") -> dict[str, Any]:
    """Recompute the edge model and every gate from the report's models and config.signoff.

    Returns {"passed", "edge_model", "gates", "closest", "mismatches"}: the recomputed verdict, edge model and
    gates, the models closest to passing when it failed (signoff_section.nearest_text), and
    every place the stored report disagrees: one entry per gate whose stored limit, value or verdict differs
    or that is missing on one side ({"name", "fields", "stored", "recomputed"}, a side None when the gate is
    absent there), plus entries named "signoff.passed" and "edge_model" when those disagree.
    """
    validate_report(report, source, for_recheck=True)
    params = _signoff_params(report["config"]["signoff"], params_class, source)
    models = report["models"]
    _check_recheck_inputs(models, params, source)
    edge, passing, _ = choose_edge_model(models, params)
    gates = signoff_gates(edge, models, params)
    # The same rule as stages.report.run: no model passing the accuracy gates fails the sign-off too.
    passed = bool(passing) and all(g["passed"] for g in gates)
    mismatches = _gate_mismatches(report["signoff"]["gates"], gates, source)
    if bool(report["signoff"]["passed"]) != passed:
        mismatches.append(
            {
                "name": "signoff.passed",
                "fields": ["passed"],
                "stored": report["signoff"]["passed"],
                "recomputed": passed,
            }
        )
    if report["edge_model"] != edge["name"]:
        mismatches.append(
            {"name": "edge_model", "fields": ["name"], "stored": report["edge_model"], "recomputed": edge["name"]}
        )
    signoff = {"passed": passed, "failed_by_model": gates_each_model_fails(models, params)}
    # The run's error line says beside a model how far its timing moved within the bench: recomputed the same way.
    moved = moved_timings(models, params.latency_batch, params.latency_provider)
    closest = nearest_text({"models": models, "signoff": signoff, "timing_moved": moved})
    return {"passed": passed, "edge_model": edge["name"], "gates": gates, "closest": closest, "mismatches": mismatches}


def _signoff_params(values: Any, params_class: type, source: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: config.signoff must be an object, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(params_class)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: config.signoff has unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    try:
        # Keys a report lacks take the current defaults, as a config without them would, except rules that a report
        # made before them did not apply: those take the value that reproduces its choice.
        return params_class(**{**BEFORE_THEIR_TIME, **values})
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from error
    except TypeError as error:  # a comparison in Params' checks on a value of the wrong type
        raise ConfigError(f"{source}: config.signoff is not valid: {error}") from error


def _check_recheck_inputs(models: list[dict], params: Any, source: str) -> None:
    names = [m["name"] for m in models]
    for needed in ("teacher", "student"):
        if needed not in names:
            raise ConfigError(f"{source}: the gates need a model named {needed!r}; models are {', '.join(names)}")
    batch, provider = str(params.latency_batch), provider_name(params.latency_provider)
    for i, model in enumerate(models):
        for key in ("validation_accuracy", "validation_correct", "validation_images", "test_correct", "test_images"):
            # The edge model is chosen on validation, with paired intervals: a report made before that lacks them.
            lookup(model, [key], source, prefix=f"models[{i}].")
        for stat in ("p50_ms", "p90_ms"):
            value = lookup(model, ["latency", provider, batch, stat], source, prefix=f"models[{i}].")
            if not is_number(value):
                raise ConfigError(
                    f"{source}: models[{i}].latency.{provider}.{batch}.{stat} is {value!r}, expected a number"
                )


def _gate_mismatches(stored: Any, recomputed: list[dict], source: str) -> list[dict[str, Any]]:
    if not isinstance(stored, list) or not all(isinstance(g, dict) and "name" in g for g in stored):
        raise ConfigError(f"{source}: signoff.gates must be a list of objects with a name")
    stored_by_name = {g["name"]: g for g in stored}
    mismatches = []
    for gate in recomputed:
        old = stored_by_name.pop(gate["name"], None)
        fields = (
            ["gate"] if old is None else [f for f in ("limit", "value", "passed") if not _same(old.get(f), gate[f])]
        )
        if fields:
            mismatches.append({"name": gate["name"], "fields": fields, "stored": old, "recomputed": gate})
    # Gates the report claims that the current rules do not produce.
    mismatches += [
        {"name": name, "fields": ["gate"], "stored": g, "recomputed": None} for name, g in stored_by_name.items()
    ]
    return mismatches


def _same(stored: Any, recomputed: Any) -> bool:
    if isinstance(recomputed, bool):
        return isinstance(stored, bool) and stored == recomputed
    if is_number(stored) and is_number(recomputed):
        # JSON round-trips floats exactly; the tolerance only absorbs other writers' formatting.
        return math.isclose(stored, recomputed, rel_tol=1e-9, abs_tol=1e-12)
    return stored == recomputed


def format_recheck(result: dict[str, Any]) -> str:
    """One line for the verdict, then one per mismatch."""
    verdict = "PASSED" if result["passed"] else "FAILED"
    lines = [f"recomputed sign-off: {verdict}, edge model {result['edge_model']}"]
    if result["closest"]:
        lines.append(f"closest to passing: {result['closest']}")
    if not result["mismatches"]:
        lines.append("the stored verdict, edge model and gates agree with the recomputed ones")
    for m in result["mismatches"]:
        lines.append(
            f"- mismatch in {m['name']} ({', '.join(m['fields'])}): stored {m['stored']}, recomputed {m['recomputed']}"
        )
    return "\n".join(lines) + "\n"
