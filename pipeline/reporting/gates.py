"""The sign-off rules: which model is the edge model, and the gates it must pass.

Shared by the report stage (which applies them) and `edgeforge signoff` (which re-applies them to a stored report).
`params` is the signoff config section (the report stage's Params); the functions read its fields only.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.errors import ConfigError
from pipeline.runtime.benchtool import PROVIDERS

LATENCY_LIMIT = re.compile(r"^(cpu|cuda|tensorrt):(\d+):(p50|p90|p95|p99)<=(\d+(?:\.\d*)?(?:e-?\d+)?)$")


def parse_latency_limit(text: str) -> tuple[str, int, str, float]:
    """'cpu:1:p99<=0.5' -> ('cpu', 1, 'p99', 0.5), or a ConfigError showing the form."""
    match = LATENCY_LIMIT.match(text.replace(" ", ""))
    if not match or float(match.group(4)) <= 0:
        raise ConfigError(
            f"signoff.latency_limits entry {text!r} is not allowed: expected PROVIDER:BATCH:PERCENTILE<=MS with "
            "PROVIDER cpu, cuda or tensorrt and PERCENTILE p50, p90, p95 or p99, e.g. 'cpu:1:p99<=0.5'"
        )
    return match.group(1), int(match.group(2)), match.group(3), float(match.group(4))


def latency_limit_gates(edge: dict, params: Any) -> list[dict[str, Any]]:
    """A gate per latency limit; a provider that was not measured (skipped) fails its gate."""
    gates = []
    for text in params.latency_limits:
        provider, batch, percentile, limit = parse_latency_limit(text)
        stats = edge["latency"].get(PROVIDERS[provider][0], {}).get(str(batch))
        value = None if stats is None else stats[f"{percentile}_ms"]
        name = f"max_latency_ms_{percentile}_{provider}_batch_{batch}"
        gates.append(gate(name, limit, value, value is not None and value <= limit))
    return gates


def gate(name: str, limit: float, value: float | None, passed: bool) -> dict[str, Any]:
    return {"name": name, "limit": limit, "value": value, "passed": bool(passed)}


def accuracy_gates(model: dict, teacher: dict, student: dict, params: Any) -> list[dict[str, Any]]:
    return [
        gate("min_accuracy", params.min_accuracy, model["accuracy"], model["accuracy"] >= params.min_accuracy),
        gate(
            "max_drop_vs_teacher",
            params.max_drop_vs_teacher,
            teacher["accuracy"] - model["accuracy"],
            teacher["accuracy"] - model["accuracy"] <= params.max_drop_vs_teacher + 1e-12,
        ),
        gate(
            "max_drop_vs_student",
            params.max_drop_vs_student,
            student["accuracy"] - model["accuracy"],
            student["accuracy"] - model["accuracy"] <= params.max_drop_vs_student + 1e-12,
        ),
    ]


def p(model: dict, batch: int, stat: str, provider: str = "cpu") -> float:
    return model["latency"][PROVIDERS[provider][0]][str(batch)][stat]


def choose_edge_model(models: list[dict], params: Any) -> tuple[dict, list[str]]:
    """The fastest model passing the accuracy gates, else the most accurate one.

    Models within `latency_tie` of the fastest p50 count as equally fast and the most accurate of them
    wins (then the smaller file): a microsecond of noise must not ship a less accurate model.
    """
    by_name = {m["name"]: m for m in models}
    passing = [
        m for m in models if all(g["passed"] for g in accuracy_gates(m, by_name["teacher"], by_name["student"], params))
    ]
    if not passing:
        return max(models, key=lambda m: m["accuracy"]), []
    batch, provider = params.latency_batch, params.latency_provider
    fastest = min(p(m, batch, "p50_ms", provider) for m in passing)
    tied = [m for m in passing if p(m, batch, "p50_ms", provider) <= fastest * (1 + params.latency_tie)]
    winner = max(tied, key=lambda m: (m["accuracy"], -m["size_bytes"]))
    return winner, [m["name"] for m in passing]


def signoff_gates(edge: dict, models: list[dict], params: Any) -> list[dict[str, Any]]:
    by_name = {m["name"]: m for m in models}
    gates = accuracy_gates(edge, by_name["teacher"], by_name["student"], params)
    batch = params.latency_batch
    if params.max_latency_ms is not None:
        value = p(edge, batch, "p90_ms", params.latency_provider)
        gates.append(
            gate(f"max_latency_ms_p90_batch_{batch}", params.max_latency_ms, value, value <= params.max_latency_ms)
        )
    if params.min_speedup_vs_teacher is not None:
        provider = params.latency_provider
        value = p(by_name["teacher"], batch, "p50_ms", provider) / p(edge, batch, "p50_ms", provider)
        gates.append(
            gate(
                f"min_speedup_vs_teacher_batch_{batch}",
                params.min_speedup_vs_teacher,
                value,
                value >= params.min_speedup_vs_teacher,
            )
        )
    if params.max_size_bytes is not None:
        value = edge["size_bytes"]
        gates.append(gate("max_size_bytes", params.max_size_bytes, value, value <= params.max_size_bytes))
    return gates + latency_limit_gates(edge, params)


def pareto_front(models: list[dict], batch: str = "1", provider: str = PROVIDERS["cpu"][0]) -> list[str]:
    """Names (in input order) of the models no other model dominates in accuracy and p50 latency at `batch`.

    A model is dominated when another is at least as accurate and at least as fast, and strictly better in
    one of the two; models without a latency at `batch` are left out.
    """
    points = {
        m["name"]: (m["accuracy"], lat["p50_ms"])
        for m in models
        if (lat := (m.get("latency") or {}).get(provider, {}).get(batch))
    }

    def dominated(accuracy: float, p50: float) -> bool:
        return any(
            a >= accuracy and q <= p50 and (a > accuracy or q < p50)
            for a, q in points.values()
            if (a, q) != (accuracy, p50)
        )

    return [name for name, (accuracy, p50) in points.items() if not dominated(accuracy, p50)]
