"""Compare two sign-off reports (report.json): what changed per model and metric, and what regressed.

`compare(old, new)` lines up models by name and lists, per metric, the old and new value with the absolute and
relative change, and flags regressions a CLI can exit non-zero on:

- "latency regression": the new latency is worse by more than `min_change` (default 5%) *and* beyond the measured
  noise. Reports measured in rounds compare p50s, and the noise is the spread between rounds: every new round's
  median must lie above every old round's. Older reports compare p90s, and the noise is their confidence
  intervals (disjoint); without either, the minimum change alone decides. Two benches of the same models on a
  quiet machine therefore compare clean.
- "accuracy drop": the accuracy fell by more than `accuracy_drop` (default 0.005, half a point).
- "sign-off failed": the old report passed its sign-off and the new one does not.

Added and removed models, and a change of edge model, are reported but are not regressions by themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

DEFAULT_ACCURACY_DROP = 0.005
DEFAULT_MIN_CHANGE = 0.05
MODEL_METRICS = ("accuracy", "size_bytes", "params", "macs")
LATENCY_STATS = ("p50_ms", "p90_ms", "p99_ms")
REQUIRED_MODEL_KEYS = ("name", *MODEL_METRICS, "latency")


# --- loading and validation ----------------------------------------------------------------------------------


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report.json; any problem is a ConfigError naming the file (and the key)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the report: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable report.json ({error})") from error
    validate_report(report, str(path))
    return report


def validate_report(report: Any, source: str = "report", *, for_recheck: bool = False) -> None:
    """Raise a ConfigError naming `source` and the first missing or malformed key."""
    if not isinstance(report, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(report).__name__}")
    required = ["models", "edge_model", "signoff", "signoff.passed"]
    required += ["signoff.gates", "config", "config.signoff"] if for_recheck else []
    for dotted in required:
        lookup(report, dotted.split("."), source)
    models = report["models"]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{source}: models must be a non-empty list")
    for i, model in enumerate(models):
        for key in REQUIRED_MODEL_KEYS:
            lookup(model, [key], source, prefix=f"models[{i}].")
        for key in MODEL_METRICS:
            if not is_number(model[key]):
                raise ConfigError(f"{source}: models[{i}].{key} is {model[key]!r}, expected a number")
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: model names must be unique, got {names}")


def lookup(data: Any, keys: list[str], source: str, prefix: str = "") -> Any:
    for depth, key in enumerate(keys):
        if not isinstance(data, dict) or key not in data:
            raise ConfigError(f"{source}: missing key {prefix}{'.'.join(keys[: depth + 1])}")
        data = data[key]
    return data


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- compare -------------------------------------------------------------------------------------------------


def compare(
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    accuracy_drop: float = DEFAULT_ACCURACY_DROP,
    min_change: float = DEFAULT_MIN_CHANGE,
) -> dict[str, Any]:
    """What changed from `old` to `new`; `result["regressions"]` is empty when nothing got worse.

    Returns {"thresholds", "changes": [{"model", "metric", "provider", "batch", "old", "new", "change",
    "relative_change"}], "added", "removed", "edge_model": {"old", "new", "changed"}, "signoff": {"old", "new",
    "changed"}, "regressions": [{"kind", "model", "detail", ...}]}. `provider` and `batch` are None for the
    metrics that are not latencies; `change` and `relative_change` are None when a side lacks the value.
    """
    validate_report(old, "old report")
    validate_report(new, "new report")
    old_models, new_models = ({m["name"]: m for m in r["models"]} for r in (old, new))
    common = [name for name in new_models if name in old_models]
    changes, regressions = [], []
    for name in common:
        changes += _model_changes(old_models[name], new_models[name])
        regressions += _accuracy_drop(old_models[name], new_models[name], accuracy_drop)
        regressions += _latency_regressions(old_models[name], new_models[name], min_change)
    signoff = _before_after(bool(old["signoff"]["passed"]), bool(new["signoff"]["passed"]))
    if signoff["old"] and not signoff["new"]:
        failed = [g["name"] for g in new["signoff"].get("gates", []) if not g.get("passed")]
        detail = "sign-off PASSED → FAILED" + (f" (failed gates: {', '.join(failed)})" if failed else "")
        regressions.append({"kind": "sign-off failed", "model": None, "detail": detail})
    return {
        "thresholds": {"accuracy_drop": accuracy_drop, "min_change": min_change},
        "changes": changes,
        "added": [name for name in new_models if name not in old_models],
        "removed": [name for name in old_models if name not in new_models],
        "edge_model": _before_after(old["edge_model"], new["edge_model"]),
        "signoff": signoff,
        "regressions": regressions,
    }


def _before_after(old: Any, new: Any) -> dict[str, Any]:
    return {"old": old, "new": new, "changed": old != new}


def _change(
    model: str, metric: str, old: Any, new: Any, provider: str | None = None, batch: str | None = None
) -> dict[str, Any]:
    both = is_number(old) and is_number(new)
    return {
        "model": model,
        "metric": metric,
        "provider": provider,
        "batch": batch,
        "old": old,
        "new": new,
        "change": new - old if both else None,
        "relative_change": (new - old) / old if both and old != 0 else None,
    }


def _model_changes(old: dict, new: dict) -> list[dict[str, Any]]:
    rows = [_change(new["name"], key, old[key], new[key]) for key in MODEL_METRICS]
    for provider, batch, old_lat, new_lat in _latency_pairs(old, new):
        rows += [
            _change(new["name"], stat, old_lat.get(stat), new_lat.get(stat), provider, batch) for stat in LATENCY_STATS
        ]
    return rows


def _latency_pairs(old: dict, new: dict) -> list[tuple[str, str, dict, dict]]:
    """(provider, batch, old stats, new stats) for every provider and batch in either model ({} where absent)."""
    pairs = []
    old_lat, new_lat = old.get("latency") or {}, new.get("latency") or {}
    for provider in dict.fromkeys([*old_lat, *new_lat]):
        old_p, new_p = old_lat.get(provider) or {}, new_lat.get(provider) or {}
        batches = sorted(dict.fromkeys([*old_p, *new_p]), key=lambda b: int(b) if b.isdigit() else math.inf)
        pairs += [(provider, batch, old_p.get(batch) or {}, new_p.get(batch) or {}) for batch in batches]
    return pairs


def _accuracy_drop(old: dict, new: dict, threshold: float) -> list[dict[str, Any]]:
    drop = old["accuracy"] - new["accuracy"]
    if drop <= threshold:
        return []
    detail = f"accuracy {old['accuracy']:.4f} → {new['accuracy']:.4f} ({-drop:+.4f}; allowed drop {threshold:g})"
    return [
        {
            "kind": "accuracy drop",
            "model": new["name"],
            "old": old["accuracy"],
            "new": new["accuracy"],
            "detail": detail,
        }
    ]


def _latency_regressions(old: dict, new: dict, min_change: float) -> list[dict[str, Any]]:
    found = []
    for provider, batch, old_lat, new_lat in _latency_pairs(old, new):
        stat = "p50_ms" if "round_medians_ms" in old_lat and "round_medians_ms" in new_lat else "p90_ms"
        if not (is_number(old_lat.get(stat)) and is_number(new_lat.get(stat))):
            continue  # measured on one side only: nothing to compare
        verdict = _regressed(old_lat, new_lat, stat, min_change)
        if verdict is not None:
            found.append(
                {
                    "kind": "latency regression",
                    "model": new["name"],
                    "provider": provider,
                    "batch": batch,
                    "statistic": stat.removesuffix("_ms"),
                    "old": old_lat[stat],
                    "new": new_lat[stat],
                    "method": verdict[0],
                    "detail": f"{stat.removesuffix('_ms')} at batch {batch} on {provider}: {verdict[1]}",
                }
            )
    return found


def _regressed(old: dict, new: dict, stat: str, min_change: float) -> tuple[str, str] | None:
    """(method, detail) when the new latency is worse by more than `min_change` and beyond the noise, else None.

    The noise: between the rounds when both sides were measured in rounds (every new round slower than every old
    one), else the p90's confidence intervals (disjoint), else none (the relative change alone decides)."""
    change = new[stat] / old[stat] - 1 if old[stat] > 0 else 0.0
    text = f"{old[stat]:.4g} ms → {new[stat]:.4g} ms ({change:+.1%}; minimum change {min_change:.0%})"
    if change <= min_change:
        return None
    if stat == "p50_ms":
        old_rounds, new_rounds = old["round_medians_ms"], new["round_medians_ms"]
        if min(new_rounds) > max(old_rounds):
            return "rounds", f"{text}, every new round slower than every old one"
        return None
    old_ci, new_ci = old.get("p90_ci_ms"), new.get("p90_ci_ms")
    if _valid_ci(old_ci) and _valid_ci(new_ci):
        if new_ci[0] > old_ci[1]:
            return "ci", f"{text}, the p90 confidence intervals do not overlap"
        return None
    return "relative", f"{text}; no rounds or confidence intervals to tell noise from change"


def _valid_ci(ci: Any) -> bool:
    return isinstance(ci, list | tuple) and len(ci) == 2 and all(is_number(v) for v in ci)


def format_comparison(result: dict[str, Any]) -> str:
    """A plain-text summary: edge model and verdict, added/removed models, every change, then the regressions."""
    edge, signoff = result["edge_model"], result["signoff"]
    verdict = {True: "PASSED", False: "FAILED"}
    lines = [
        f"edge model: {edge['old']} → {edge['new']}" + (" (changed)" if edge["changed"] else " (unchanged)"),
        f"sign-off: {verdict[signoff['old']]} → {verdict[signoff['new']]}"
        + (" (changed)" if signoff["changed"] else " (unchanged)"),
    ]
    if result["added"]:
        lines.append(f"models added: {', '.join(result['added'])}")
    if result["removed"]:
        lines.append(f"models removed: {', '.join(result['removed'])}")
    lines += ["", *_changes_table(result["changes"]), ""]
    regressions = result["regressions"]
    lines.append(f"regressions: {len(regressions)}" if regressions else "regressions: none")
    lines += [f"- {r['model'] + ': ' if r.get('model') else ''}{r['kind']}: {r['detail']}" for r in regressions]
    return "\n".join(lines) + "\n"


def _changes_table(changes: list[dict[str, Any]]) -> list[str]:
    header = ("model", "metric", "where", "old", "new", "change", "relative")
    rows = [header] + [
        (
            c["model"],
            c["metric"],
            f"{c['provider']} bs{c['batch']}" if c["provider"] else "",
            _number(c["old"]),
            _number(c["new"]),
            "" if c["change"] is None else _number(c["change"], signed=True),
            "" if c["relative_change"] is None else f"{c['relative_change']:+.1%}",
        )
        for c in changes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _number(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"
