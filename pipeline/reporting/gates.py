"""The sign-off rules: which model is the edge model, and the gates it must pass.

Shared by the report stage (which applies them) and `edgeforge signoff` (which re-applies them to a stored report).
`params` is the signoff config section (the report stage's Params); the functions read its fields only.

The edge model is chosen on the validation split alone, so the test accuracy it then reports is not optimistic:

1. Candidates: the models that pass the accuracy gates on their validation accuracy.
2. The fastest candidate (p50 at `latency_batch` on `latency_provider`) is the edge model, unless a candidate as
   good as equally fast is more accurate beyond the noise: the 95% interval of the paired difference of their
   validation accuracies (the same images) lies above 0. Then the most accurate such candidate wins. As good as
   equally fast: within `latency_tie` of the fastest p50, or, with `accurate_within_limits` (the default), within
   every latency limit the sign-off sets (`latency_limits`, which a prune budget joins, and `max_latency_ms`): a
   user who states a budget asks for the most accurate model under it. A validation difference inside the noise
   never outweighs speed.

The sign-off gates then judge the edge model on the test split. An accuracy gate compares the point estimate, or
with `accuracy_basis: bound` the end of the 95% interval that is worst for the model: the lower Wilson bound of its
accuracy, the upper bound of the paired drop against the teacher or the student. Each gate records the split and
what it compared.

A latency gate compares the percentile of the pooled runs of the bench's kept rounds, or with `latency_basis:
bound` the end of what the bench measured that is worst for the model (`latency_value`): for a p50 its slowest kept
round's median, for a p90, p95 or p99 the upper end of that percentile's 95% interval (the slowest run where the
runs are too few for one: under 36 for a p90, 72 for a p95, 368 for a p99). A bench before bench VERSION 9 measured
no interval for a p95 or p99, and its gates compare the pooled value on either basis. The speed-up gate with
`bound` divides the teacher's fastest timing in the bench (`fastest_timing_ms`: every round's median, the rounds
dropped as disturbed among them, and its settings search's timing of the settings it kept) by the edge model's
slowest kept round. Why: on 2-core VMs the teacher's 2-thread timing moved 1.5x within one bench (0.4200 ms in its
settings search, 0.6015-0.6726 ms in the rounds) while the 1-thread edge model held; the point estimate read 11.27x,
the bound about 7x (BENCHMARKS.md).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.errors import ConfigError
from pipeline.reporting.intervals import paired_difference, unpack
from pipeline.runtime.latency import has_upper_bound
from pipeline.runtime.timing import PROVIDER_NAMES, is_provider, provider_name

SPLITS = {
    "test": ("accuracy", "accuracy_interval", "test_correct"),
    "validation": ("validation_accuracy", "validation_interval", "validation_correct"),
}  # split -> keys of a report's model

SPEEDUP_GATE = "min_speedup_vs_teacher_batch_"  # + the batch: the speed-up gate's name
LATENCY_LIMIT = re.compile(r"^([A-Za-z]\w*):(\d+):(p50|p90|p95|p99)<=(\d+(?:\.\d*)?(?:e-?\d+)?)$")


def parse_latency_limit(text: str) -> tuple[str, int, str, float]:
    """'cpu:1:p99<=0.5' -> ('cpu', 1, 'p99', 0.5), or a ConfigError showing the form."""
    match = LATENCY_LIMIT.match(text.replace(" ", ""))
    if not match or float(match.group(4)) <= 0 or not is_provider(match.group(1)):
        raise ConfigError(
            f"signoff.latency_limits entry {text!r} is not allowed: expected PROVIDER:BATCH:PERCENTILE<=MS with "
            f"PROVIDER {PROVIDER_NAMES} and PERCENTILE p50, p90, p95 or p99, e.g. 'cpu:1:p99<=0.5'"
        )
    return match.group(1), int(match.group(2)), match.group(3), float(match.group(4))


def latency_limit_gates(edge: dict, params: Any) -> list[dict[str, Any]]:
    """A gate per latency limit; a provider that was not measured (skipped) fails its gate."""
    gates = []
    for text in params.latency_limits:
        provider, batch, percentile, limit = parse_latency_limit(text)
        value, compares = latency_value(edge, batch, percentile, provider, params.latency_basis)
        name = f"max_latency_ms_{percentile}_{provider}_batch_{batch}"
        gates.append(gate(name, limit, value, value is not None and value <= limit, compares=compares))
    return gates


def latency_value(model: dict, batch: int, percentile: str, provider: str, basis: str) -> tuple[float | None, str]:
    """(ms, what it is) of `model`'s `percentile` at `batch` on `provider` as a gate reads it on `basis` (point or
    bound; the module docstring); (None, "not measured") when the provider or batch was not measured."""
    stats = model["latency"].get(provider_name(provider), {}).get(str(batch))
    if stats is None:
        return None, "not measured"
    point = stats[f"{percentile}_ms"]
    if basis == "bound" and percentile == "p50" and stats.get("round_medians_ms"):
        return max(stats["round_medians_ms"]), f"bound: the slowest kept round's median (p50 {point:.4g})"
    interval = stats.get(f"{percentile}_ci_ms")
    if basis == "bound" and percentile != "p50" and interval:
        if has_upper_bound(stats["runs"], int(percentile[1:]) / 100):
            return interval[1], f"bound: the upper end of the {percentile}'s 95% interval ({percentile} {point:.4g})"
        return interval[1], (
            f"bound: the slowest run, {stats['runs']} runs being too few for a 95% upper bound on the {percentile} "
            f"({percentile} {point:.4g})"
        )
    return point, f"{percentile} of the pooled runs"


def settings_search_ms(model: dict) -> float | None:
    """The settings search's p50 of the settings the model kept (refined, or screened only), None when its settings
    were not searched (bench.tune false). The search runs on the CPU at the batch models are compared at."""
    chosen = next((entry for entry in model.get("settings_search") or [] if entry["chosen"]), None)
    if chosen is None:
        return None
    return chosen["refine_ms"] if chosen["refine_ms"] is not None else chosen["screen_ms"]


def fastest_timing_ms(model: dict, batch: int, provider: str) -> float:
    """The fastest `model` was timed at its settings in the bench, at `batch` on `provider`: its p50, every round's
    median (kept, or dropped as disturbed) and, on the CPU, its settings search's timing of the settings it kept
    (tuned at the batch models are compared at, which the config checks)."""
    stats = model["latency"][provider_name(provider)][str(batch)]
    timings = [stats["p50_ms"], *stats.get("round_medians_ms", []), *stats.get("dropped_rounds_ms", [])]
    if (search_ms := settings_search_ms(model)) is not None and provider_name(provider) == provider_name("cpu"):
        timings.append(search_ms)
    return min(timings)


def speedup_vs_teacher(teacher: dict, edge: dict, batch: int, provider: str, basis: str) -> tuple[float, str]:
    """(teacher / edge, what it compares): p50 over p50, or on `bound` the teacher's fastest timing in the bench over
    the edge model's slowest kept round (the lowest speed-up the bench's timings allow)."""
    point = p(teacher, batch, "p50_ms", provider) / p(edge, batch, "p50_ms", provider)
    if basis == "bound":
        teacher_ms = fastest_timing_ms(teacher, batch, provider)
        edge_ms = latency_value(edge, batch, "p50", provider, basis)[0]
        return teacher_ms / edge_ms, (
            f"bound: the teacher's fastest timing in the bench ({teacher_ms:.4g} ms) over the edge model's slowest "
            f"kept round ({edge_ms:.4g} ms); p50 over p50 {point:.4g}"
        )
    return point, "p50 over p50 (pooled runs)"


def gate(
    name: str, limit: float, value: float | None, passed: bool, split: str | None = None, compares: str | None = None
) -> dict[str, Any]:
    record = {"name": name, "limit": limit, "value": value, "passed": bool(passed)}
    if split is not None:
        record["split"] = split
    if compares is not None:
        record["compares"] = compares
    return record


def correct(model: dict, split: str) -> Any:
    """The model's per-image correctness on `split` (booleans, in the split's image order)."""
    key = SPLITS[split][2]
    return unpack(model[key], model[f"{split}_images"])


def accuracy_gates(model: dict, teacher: dict, student: dict, params: Any, split: str = "test") -> list[dict[str, Any]]:
    """min_accuracy and the drops against the teacher and the student, on `split`, by `params.accuracy_basis`."""
    accuracy_key, interval_key, _ = SPLITS[split]
    bound = params.accuracy_basis == "bound"
    compares = "95% bound" if bound else "point estimate"
    value = model[interval_key][0] if bound else model[accuracy_key]
    gates = [gate("min_accuracy", params.min_accuracy, value, value >= params.min_accuracy, split, compares)]
    for reference, limit in (("teacher", params.max_drop_vs_teacher), ("student", params.max_drop_vs_student)):
        other = teacher if reference == "teacher" else student
        if bound and other is not model:
            drop = paired_difference(correct(other, split), correct(model, split))[2]  # the upper end
        else:
            drop = other[accuracy_key] - model[accuracy_key]
        gates.append(gate(f"max_drop_vs_{reference}", limit, drop, drop <= limit + 1e-12, split, compares))
    return gates


def p(model: dict, batch: int, stat: str, provider: str = "cpu") -> float:
    return model["latency"][provider_name(provider)][str(batch)][stat]


def choose_edge_model(models: list[dict], params: Any) -> tuple[dict, list[str], list[str]]:
    """(edge model, names passing the accuracy gates on validation, names as good as equally fast as the fastest,
    the fastest first).

    See the module docstring; with no model passing, the most accurate on validation is named."""
    by_name = {m["name"]: m for m in models}
    teacher, student = by_name["teacher"], by_name["student"]
    passing = [m for m in models if all(g["passed"] for g in accuracy_gates(m, teacher, student, params, "validation"))]
    if not passing:
        return max(models, key=lambda m: m["validation_accuracy"]), [], []
    batch, provider = params.latency_batch, params.latency_provider
    fastest = min(passing, key=lambda m: (p(m, batch, "p50_ms", provider), -m["validation_accuracy"], m["size_bytes"]))
    limit = p(fastest, batch, "p50_ms", provider) * (1 + params.latency_tie)
    fast_enough = [m for m in passing if p(m, batch, "p50_ms", provider) <= limit or within_latency_limits(m, params)]
    tied = sorted(fast_enough, key=lambda m: m is not fastest)
    reference = correct(fastest, "validation")
    better = [m for m in tied if paired_difference(correct(m, "validation"), reference)[1] > 0]
    winner = max(better, key=lambda m: m["validation_accuracy"]) if better else fastest
    return winner, [m["name"] for m in passing], [m["name"] for m in tied]


def chooses_within_limits(params: Any) -> bool:
    """Whether every model within the sign-off's latency limits counts as fast enough for the edge choice: with
    `accurate_within_limits` and at least one limit (max_latency_ms or latency_limits)."""
    return params.accurate_within_limits and bool(params.latency_limits or params.max_latency_ms is not None)


def within_latency_limits(model: dict, params: Any) -> bool:
    """With chooses_within_limits, whether the model passes every latency gate the sign-off would set on it."""
    if not chooses_within_limits(params):
        return False
    return all(g["passed"] for g in max_latency_gate(model, params) + latency_limit_gates(model, params))


def max_latency_gate(model: dict, params: Any) -> list[dict[str, Any]]:
    """signoff.max_latency_ms: the p90 at latency_batch on latency_provider (no gate when it is null)."""
    if params.max_latency_ms is None:
        return []
    value, compares = latency_value(model, params.latency_batch, "p90", params.latency_provider, params.latency_basis)
    name = f"max_latency_ms_p90_batch_{params.latency_batch}"
    passed = value is not None and value <= params.max_latency_ms
    return [gate(name, params.max_latency_ms, value, passed, compares=compares)]


def edge_reason(edge: dict, passing: list[str], tied: list[str], params: Any) -> str:
    """Why the edge model won, in a sentence for the report."""
    if not passing:
        return "no model passed the accuracy gates on the validation split; the most accurate on it is named"
    where = f"p50 at batch {params.latency_batch} on {params.latency_provider}"
    equally_fast = " or ".join(
        ([f"within {params.latency_tie:.0%} of the fastest p50"] if params.latency_tie else [])
        + (["within every latency limit of the sign-off"] if chooses_within_limits(params) else [])
    )
    reason = (
        f"the fastest ({where}) of the models passing the accuracy gates on the validation split ({', '.join(passing)})"
    )
    if equally_fast:
        reason += (
            # "The fastest and": the fastest is always among them, within a limit or not (a budget no model meets).
            f"; of the fastest and those {equally_fast} ({', '.join(tied)}), a slower one would have won only with a "
            "validation accuracy higher beyond the 95% noise (paired interval above 0)"
        )
        if edge["name"] != tied[0] and edge["name"] in tied:
            reason = (
                f"{equally_fast} ({where}) and more accurate on the validation split beyond the 95% noise than the "
                f"fastest, among the models passing the accuracy gates there ({', '.join(passing)})"
            )
    return reason + "; the test split was not read for this choice"


def signoff_gates(edge: dict, models: list[dict], params: Any) -> list[dict[str, Any]]:
    """The edge model's gates: accuracy on the test split, latency, speed-up, size."""
    by_name = {m["name"]: m for m in models}
    gates = accuracy_gates(edge, by_name["teacher"], by_name["student"], params, "test")
    if edge.get("target_test_accuracy") is not None:  # bench.target_accuracy: the device's onnxruntime's
        value = edge["target_test_accuracy"]
        gates.append(
            gate(
                "min_accuracy_on_target",
                params.min_accuracy,
                value,
                value >= params.min_accuracy,
                "test",
                "point estimate, the latency target's onnxruntime",
            )
        )
    batch = params.latency_batch
    gates += max_latency_gate(edge, params)
    if params.min_speedup_vs_teacher is not None:
        value, compares = speedup_vs_teacher(
            by_name["teacher"], edge, batch, params.latency_provider, params.latency_basis
        )
        limit = params.min_speedup_vs_teacher
        gates.append(gate(f"{SPEEDUP_GATE}{batch}", limit, value, value >= limit, compares=compares))
    if params.max_size_bytes is not None:
        value = edge["size_bytes"]
        gates.append(gate("max_size_bytes", params.max_size_bytes, value, value <= params.max_size_bytes))
    if getattr(params, "max_memory_mb", None) is not None:  # absent from the params of reports made before it
        value = (edge.get("memory") or {}).get("peak_rss_mb")  # None: not measured, which fails the gate
        gates.append(
            gate("max_memory_mb", params.max_memory_mb, value, value is not None and value <= params.max_memory_mb)
        )
    return gates + latency_limit_gates(edge, params)


def pareto_front(models: list[dict], batch: str = "1", provider: str = "CPUExecutionProvider") -> list[str]:
    """Names (in input order) of the models no other model dominates in validation accuracy and p50 at `batch`.

    A model is dominated when another is at least as accurate and at least as fast, and strictly better in
    one of the two; models without a latency at `batch` are left out.
    """
    points = {
        m["name"]: (m["validation_accuracy"], lat["p50_ms"])
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


def gates_each_model_fails(models: list[dict], params: Any) -> dict[str, list[dict[str, Any]]]:
    """{model name: the sign-off gates it would fail as the edge model}, each model judged as `signoff_gates` judges
    the edge model (test split). Nothing is chosen on it: on a failed sign-off it says what stands between each model
    and a pass, e.g. the model within the budget that misses an accuracy gate and the one that misses the budget."""
    return {m["name"]: [g for g in signoff_gates(m, models, params) if not g["passed"]] for m in models}
