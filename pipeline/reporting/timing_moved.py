"""Models whose timing moved within one bench: the settings search timed the chosen settings at one p50, the rounds
after it at another. The rounds are what the report reads; a move says the machine ran that model at another speed
minutes apart, and every ratio against the model (the speed-up gate, a budget relative to the teacher) is as
uncertain as the move.

Seen on a 2-core Xeon VM (BENCHMARKS.md, eighth session): the teacher at 2 threads measured 0.4200 ms in its
settings search and 0.6420 ms in the rounds of the same bench, while the 1-thread models held within 3%; the
speed-up gate read 11.27x where the search's timing gives 7.4x.
"""

from __future__ import annotations

from typing import Any

from pipeline.reporting.gates import settings_search_ms
from pipeline.runtime.timing import provider_name

MOVED = 0.25  # |rounds / search - 1| beyond this is said; the models that held here moved under 4%


def moved_timings(models: list[dict], batch: int, provider: str) -> list[dict[str, Any]]:
    """[{"name", "search_ms", "rounds_ms", "change"}] of the models whose rounds' p50 at `batch` (the settings
    search's batch) differs from the settings search's p50 of the same settings by more than MOVED. The settings are
    searched on the CPU provider only: another provider's latencies have nothing to compare with."""
    name = provider_name(provider)
    if name != provider_name("cpu"):
        return []
    moved = []
    for model in models:
        search_ms = settings_search_ms(model)
        latency = (model.get("latency") or {}).get(name, {}).get(str(batch))
        if search_ms is None or latency is None:
            continue  # settings not searched (fixed), or not measured at this batch
        change = latency["p50_ms"] / search_ms - 1
        if abs(change) > MOVED:
            moved.append(
                {"name": model["name"], "search_ms": search_ms, "rounds_ms": latency["p50_ms"], "change": change}
            )
    return moved


def moved_text(report: dict[str, Any]) -> str:
    """One sentence for report.md and report.html, '' when nothing moved (or a report before the check)."""
    moved = report.get("timing_moved")
    if not moved:
        return ""
    each = "; ".join(
        f"{m['name']} {m['search_ms']:.4f} ms in its settings search, {m['rounds_ms']:.4f} ms in the rounds "
        f"({m['change']:+.0%})"
        for m in moved
    )
    if report["config"]["signoff"].get("latency_basis", "point") == "bound":
        return (
            f"Timing moved within this bench (more than {MOVED:.0%}): {each}. The gates read the end of these timings "
            "worst for the edge model (signoff.latency_basis: bound): the teacher's fastest, the settings search's "
            "among them, and the edge model's slowest kept round."
        )
    return (
        f"Timing moved within this bench (more than {MOVED:.0%}): {each}. The rounds are what the gates read; a "
        "ratio against such a model (the speed-up gate, a budget relative to the teacher) is as uncertain as the move "
        "(signoff.latency_basis: bound gates it at the move's end worst for the edge model)."
    )


def held_text(report: dict[str, Any]) -> str:
    """One sentence for report.md and report.html on the models whose settings search chose more than one thread
    and were timed at one thread beside it in the rounds (pipeline/runtime/one_thread_rival.py); '' when none was."""
    checked = [(m["name"], m["settings_check"]) for m in report["models"] if m.get("settings_check")]
    if not checked:
        return ""
    each = "; ".join(
        f"{name}: {check['searched']} {check['searched_ms']:.4f} ms, {check['one_thread']} {check['one_thread_ms']:.4f}"
        f" ms, {'one thread kept' if check['kept'] == 'one_thread' else 'searched setting kept'}"
        for name, check in checked
    )
    return (
        "Settings held to the rounds: a model whose settings search chose more than one thread was also timed at its "
        "fastest one-thread setting in every round, and keeps the one that ran faster (the median of every round's "
        f"median, dropped rounds included), since sessions of several threads can run at two speeds: {each}."
    )
