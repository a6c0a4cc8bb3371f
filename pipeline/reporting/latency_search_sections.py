"""report.md sections of the prune stage's latency-budget search: the uniform ratio's trace, or a per-layer
search's channel counts per group, its latency table, the configurations it measured and (sampled) how the
configurations it scored on validation compared."""

from __future__ import annotations

import statistics
from typing import Any

from pipeline.reporting.budget_gate import budget_key, budget_source
from pipeline.search.prune_plateau import setting
from pipeline.search.thread_probe import text as probe_text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _measured(entry: dict[str, Any]) -> str:
    """A search's measurement: the median of its repeats (prune.search_repeats) with their range, and its form."""
    runs = entry.get("latency_runs_ms", [])
    spread = f"; {len(runs)} runs {min(runs):.4f}–{max(runs):.4f}" if len(runs) > 1 else ""
    return f"{entry['latency_ms']:.4f} ({entry['format']}{spread})"


Parts = tuple[str, list[str], list[list[str]]]  # a table's sentence, header and rows, for report.md and report.html


def as_lines(parts: Parts | None) -> list[str]:
    """report.md's lines of a sentence and its table ([] for none)."""
    if parts is None:
        return []
    intro, header, rows = parts
    return ["", intro, "", *table(header, rows)]


def plateau_parts(search: dict[str, Any]) -> Parts | None:
    """A missed budget's contenders timed again in interleaved rounds (pipeline/search/prune_plateau.py)."""
    if "plateau" not in search:
        return None
    plateau, chosen = search["plateau"], setting(search)
    rows = []
    for row in plateau["contenders"]:
        marks = ["fastest"] if row["setting"] == plateau["fastest_setting"] else []
        marks += ["**chosen**"] if row["setting"] == chosen else []
        runs = " ".join(f"{ms:.4f}" for ms in row["runs_ms"])
        slower = "yes" if row["slower_every_round"] else "no"
        rows.append([f"{row['ratio']:.1%}", runs, f"{row['median_ms']:.4f}", slower, ", ".join(marks)])
    header = ["channels removed", f"p50 ms in {plateau['rounds']} interleaved rounds", "median", "slower every round"]
    intro = (
        f"Where no candidate meets the budget, those whose fastest repeat was within {plateau['window'] - 1:.0%} of "
        f"the fastest are timed again in interleaved rounds ({plateau['seconds']:.1f} s); a candidate slower than the "
        "fastest of the rounds in every round is slower, and of the rest the search's preferred one ships:"
    )
    return intro, [*header, ""], rows


def plateau_lines(search: dict[str, Any]) -> list[str]:
    return as_lines(plateau_parts(search))


def confirmed_parts(search: dict[str, Any]) -> Parts | None:
    """A met budget's rivals timed again beside the chosen configuration (pipeline/search/prune_confirm.py)."""
    if "confirmed" not in search:
        return None
    confirmed = search["confirmed"]
    rows = [
        [
            f"{row['ratio']:.1%}",
            " ".join(f"{ms:.4f}" for ms in row["first_runs_ms"]),
            " ".join(f"{ms:.4f}" for ms in row["runs_ms"]),
            f"{row['median_ms']:.4f}",
            "yes" if row["meets_limit"] else "no",
            ", ".join(
                (["searched"] if row["ratio"] == confirmed["searched_ratio"] else [])
                + (["**chosen**"] if row["ratio"] == confirmed["chosen_ratio"] else [])
            ),
        ]
        for row in confirmed["entries"]
    ]
    header = ["channels removed", "first repeats ms", f"p50 ms in {confirmed['rounds']} interleaved rounds", "median"]
    outcome = confirmed.get("message", "none met the limit there, and the search's choice stands")
    intro = (
        "Configurations the search would have preferred, measured over its limit with a repeat under it, were timed "
        f"again beside its choice in interleaved rounds ({confirmed['seconds']:.1f} s): {outcome}."
    )
    return intro, [*header, "meets limit", ""], rows


def confirmed_lines(search: dict[str, Any]) -> list[str]:
    return as_lines(confirmed_parts(search))


def probe_source(probe: dict[str, Any] | None) -> str:
    """The prune stage's thread probe in a sentence after the search's method ('' where none ran)."""
    return f" {probe_text(probe)}" if probe else ""


def latency_search_section(
    search: dict[str, Any] | None, from_teacher: dict[str, Any] | None = None, probe: dict[str, Any] | None = None
) -> list[str]:
    """`from_teacher`: the prune stage's budget_from_teacher (None: the budget was set in ms); `probe`: its
    thread_probe (None: none ran)."""
    if search is None:
        return []
    if search.get("search") in ("per_layer", "sampled"):
        return per_layer_search_section(search, from_teacher, probe)
    method, achieved = search["method"], search["achieved"]
    lines = [
        "",
        f"## Latency-budget search ({budget_key(from_teacher)})",
        "",
        f"Budget {search['budget_ms']:g} ms p50 at batch {method['batch']} on {method['provider']} "
        f"({method.get('settings', method.get('threads'))}), deployed form measured: "
        f"{' or '.join(method['formats'])}; a candidate must "
        f"measure ≤ {search['limit_ms']:.4g} ms (margin {search['margin']:g}). Candidates were pruned copies of the "
        f"student, exported and timed before any fine-tuning, each {method.get('repeats', 1)} time(s), the median "
        f"counting ({len(search['trace'])} in {search['seconds']:.1f} s).{budget_source(from_teacher)}"
        f"{probe_source(probe)}",
        "",
        f"Chosen ratio **{search['ratio']:g}**: predicted {search['predicted_ms']:.4f} ms, achieved after the "
        f"fine-tune {achieved['latency_ms']:.4f} ms ({achieved['format']}).",
    ]
    if not search["met"]:
        lines += ["", f"**Budget not reached**: {search['message']}.", *plateau_lines(search)]
    lines += confirmed_lines(search)
    rows = [
        [
            f"{e['ratio']:g}",
            ms(e.get("fp32_ms")),
            ms(e.get("int8_ms")),
            _measured(e),
            f"{e['macs']:,}",
            "yes" if e["meets_limit"] else "no",
        ]
        for e in search["trace"]
    ]
    lines += ["", "Search trace, in the order measured:", ""]
    return lines + table(["ratio", "fp32 p50 ms", "int8 p50 ms", "deployed ms", "MACs", "meets limit"], rows)


def per_layer_search_section(
    search: dict[str, Any], from_teacher: dict[str, Any] | None = None, probe: dict[str, Any] | None = None
) -> list[str]:
    """A per-layer search (pipeline/search/prune_layers.py, prune_sampled.py): each group's chosen count, predicted
    vs achieved, the configurations measured and (sampled) those scored."""
    method, achieved, latencies = search["method"], search["achieved"], search["table"]
    entries = sum(len(row) - 1 for row in latencies.values()) + 1
    sampled = search["search"] == "sampled"
    lines = [
        "",
        f"## Latency-budget search ({budget_key(from_teacher)}, per layer{', sampled' if sampled else ''})",
        "",
        f"Budget {search['budget_ms']:g} ms p50 at batch {method['batch']} on {method['provider']} "
        f"({method['settings']}), deployed form measured: {' or '.join(method['formats'])}; a configuration must "
        f"measure ≤ {search['limit_ms']:.4g} ms (margin {search['margin']:g}). Latency table: {entries} pruned copies "
        f"of the student, each with one group reduced ({method['table']} for this machine and architecture in "
        f"{method.get('table_seconds', 0):.1f} s); "
        f"configurations {how_chosen(search)}, then measured "
        f"({len(search['trace'])} in {search['seconds']:.1f} s).{budget_source(from_teacher)}{probe_source(probe)}",
        "",
        f"Chosen: **{search['ratio']:.1%}** of the groups' channels removed; {method['latency_model']} prediction "
        f"{search['model_ms']:.4f} ms, measured before the fine-tune {search['predicted_ms']:.4f} ms, achieved "
        f"after the fine-tune {achieved['latency_ms']:.4f} ms ({achieved['format']}).",
    ]
    if not search["met"]:
        lines += ["", f"**Budget not reached**: {search['message']}.", *plateau_lines(search)]
    lines += confirmed_lines(search)
    rows = [
        [
            name,
            str(search["full_channels"][name]),
            f"**{search['channels'][name]}**",
            ", ".join(f"{count}: {ms:.4f}" for count, ms in row.items()),
        ]
        for name, row in latencies.items()
    ]
    lines += ["", "Channels per group, with the table (channel count: p50 ms with only that group reduced):", ""]
    lines += table(["group", "channels", "chosen", "table"], rows)
    trace = [
        [
            str(i),
            # sampled: the target and the paths; greedy: how many steps from the full model
            f"{e['target_ms']:.4f}, {' '.join(e['paths'])}" if sampled else str(e["step"]),
            " ".join(f"{name}:{count}" for name, count in e["channels"].items()),
            f"{e['model_ms']:.4f}",
            _measured(e),
            f"{e['macs']:,}",
            "yes" if e["meets_limit"] else "no",
            *([f"{e['validation']['accuracy']:.4f}"] if "validation" in e else []),
        ]
        for i, e in enumerate(search["trace"], 1)
    ]
    header = ["#", "target ms, paths" if sampled else "greedy step", "channels", "model ms", "measured ms", "MACs"]
    header += ["meets limit"]
    scored = any("validation" in e for e in search["trace"])
    lines += ["", "Configurations measured, in order (a miss before a meet is refined by bisection):", ""]
    lines += table(header + (["validation accuracy before fine-tune"] if scored else []), trace)
    return lines + (sampled_rounds(search) if sampled else []) + uniform_baseline_section(search)


UNIFORM_HEADER = [
    "search",
    "channels removed",
    "MACs",
    "before fine-tune ms",
    "after ms",
    "validation",
    "test",
    "ships",
]


def uniform_baseline_rows(search: dict[str, Any]) -> list[list[str]]:
    """The per-layer search's model and the uniform baseline's (prune.uniform_baseline), after the same fine-tune:
    one row of cells each, for report.md and report.html alike."""
    baseline = search["uniform_baseline"]
    arms = [(search["search"], search, search["finetuned"]), ("uniform", baseline, baseline["finetuned"])]
    return [
        [
            name,
            f"{arm['ratio']:.1%}"
            + (f" and blocks {', '.join(arm['dropped_blocks'])}" if arm.get("dropped_blocks") else ""),
            f"{finetuned['macs']:,}",
            f"{arm['predicted_ms']:.4f}",
            f"{arm['achieved']['latency_ms']:.4f} ({arm['achieved']['format']})",
            f"{finetuned['validation_accuracy']:.4f}",
            f"{finetuned['test_accuracy']:.4f}",
            "yes" if search["shipped"] == name else "no",
        ]
        for name, arm, finetuned in arms
    ]


def uniform_baseline_section(search: dict[str, Any]) -> list[str]:
    if "uniform_baseline" not in search:
        return []
    baseline = search["uniform_baseline"]
    candidates = ", ".join(f"{e['ratio']:g}: {e['latency_ms']:.4f}" for e in baseline["trace"])
    lines = [
        "",
        "### Against the uniform search at the same budget (prune.uniform_baseline)",
        "",
        "The student was also pruned to one ratio in every layer, "
        + ("the least whose measured p50 met the same limit" if baseline["met"] else "the fastest measured (none met)")
        + f" ({len(baseline['trace'])} ratios measured in {baseline['seconds']:.1f} s, ratio: ms: {candidates}), "
        "and fine-tuned the same way. The model that ships is the more accurate on validation of those that measured "
        "within the search's limit after their fine-tune (with neither there, within the budget; else the faster); "
        "test accuracy is reported, never chosen on." + same_model_sentence(baseline),
        "",
    ]
    remeasured = plateau_lines(baseline) + confirmed_lines(baseline)
    return lines + table(UNIFORM_HEADER, uniform_baseline_rows(search)) + remeasured


def same_model_sentence(baseline: dict[str, Any]) -> str:
    """Said when both searches kept every channel, so the two rows are one model fine-tuned once."""
    if not baseline.get("same_model"):
        return ""
    return " Both searches kept every channel: one model, fine-tuned and measured once for both rows."


def how_chosen(search: dict[str, Any]) -> str:
    if search["search"] == "sampled":
        scoring = search["method"]["scoring"]
        return (
            f"along {search['samples'] + 2} paths through the table (even, magnitude and {search['samples']} random), "
            f"ranked on validation accuracy at each target (each pruned from the student, its BatchNorm statistics "
            f"re-estimated on {scoring['bn_images']} training images, no fine-tune; {scoring['scored']} configurations "
            f"scored in {scoring['seconds']:.1f} s), the best-scoring"
        )
    return f"chosen greedily on {step_cost(search['method'])}"


def sampled_rounds(search: dict[str, Any]) -> list[str]:
    """How much the choice among the configurations scored at each target mattered, on validation."""
    rows = []
    for i, scored in enumerate(search["rounds"], 1):
        accuracies = [c["validation"]["accuracy"] for c in scored["configurations"]]
        best = scored["configurations"][0]
        rows.append(
            [
                str(i),
                f"{scored['target_ms']:.4f}",
                str(len(accuracies)),
                f"{max(accuracies):.4f} ({' '.join(best['paths'])})",
                f"{statistics.median(accuracies):.4f}",
                f"{min(accuracies):.4f}",
                f"{even_path(scored)['validation']['accuracy']:.4f}",
            ]
        )
    header = ["#", "target ms", "configurations", "best validation (paths)", "median", "worst", "even path"]
    lines = ["", "Configurations scored at each target (validation accuracy before fine-tune, BatchNorm re-estimated):"]
    return lines + [""] + table(header, rows)


def even_path(scored: dict[str, Any]) -> dict[str, Any]:
    """The configuration the `even` path (close to a uniform ratio) stopped at: every path stops at one."""
    return next(c for c in scored["configurations"] if "even" in c["paths"])


def step_cost(method: dict[str, Any]) -> str:
    """How the greedy per-layer search costed its steps."""
    scoring = method["scoring"]
    if scoring["score"] == "magnitude":
        return "the weight magnitude of the channels removed per ms the table saves (prune.search_score: magnitude)"
    return (
        f"the validation accuracy lost per ms the table saves, each configuration's BatchNorm statistics re-estimated "
        f"on {scoring['bn_images']} training images and no fine-tune (prune.search_score: validation; "
        f"{scoring['scored']} configurations scored in {scoring['seconds']:.1f} s)"
    )
