"""report.md sections for the choices edgeforge made: the edge model on the Pareto front, the latency-budget
search (ratio -> latency trace, or the per-layer search's channel counts) and the quantization variants tried."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _measured(entry: dict[str, Any]) -> str:
    """A search's measurement: the median of its repeats (prune.search_repeats) with their range, and its form."""
    runs = entry.get("latency_runs_ms", [])
    spread = f"; {len(runs)} runs {min(runs):.4f}–{max(runs):.4f}" if len(runs) > 1 else ""
    return f"{entry['latency_ms']:.4f} ({entry['format']}{spread})"


def edge_choice_section(report: dict[str, Any]) -> list[str]:
    choice = report["edge_choice"]
    batch, provider = choice["batch"], choice["provider"]
    rows = []
    for m in report["models"]:
        stats = m["latency"].get(provider, {}).get(str(batch))
        interval = m.get("validation_interval")
        rows.append(
            [
                f"**{m['name']}**" if m["name"] == report["edge_model"] else m["name"],
                f"{m['validation_accuracy']:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""),
                _ms(stats and stats["p50_ms"]),
                "yes" if m["name"] in choice["passing"] else "no",
                "yes" if m["name"] in choice.get("tied", []) else "no",
                "yes" if m["name"] in report["pareto_front"] else "no",
            ]
        )
    lines = ["", "## Edge model choice (on the validation split)", ""]
    header = [
        "model",
        "validation accuracy [95%]",
        f"p50 ms, batch {batch}, {provider}",
        "passes accuracy gates",
        "as fast as the fastest",
        "Pareto",
    ]
    lines += _table(header, rows)
    lines += [
        "",
        "As fast as the fastest: within signoff.latency_tie of the fastest p50 (only the fastest itself when it is 0); "
        "a slower one of those wins only when its validation accuracy is higher beyond the noise (the 95% interval of "
        "the paired difference on the same validation images lies above 0). Pareto front: models no other model beats "
        f"on both validation accuracy and p50. {report['edge_model']} won: {report['edge_model_reason']}.",
        "",
        "Every choice of the run and the split it read:",
        "",
    ]
    choices = [[c["choice"], c["split"], c["by"]] for c in report.get("choices", [])]
    return lines + _table(["choice", "split", "by"], choices)


def latency_search_section(search: dict[str, Any] | None) -> list[str]:
    if search is None:
        return []
    if search.get("search") == "per_layer":
        return per_layer_search_section(search)
    method, achieved = search["method"], search["achieved"]
    lines = [
        "",
        "## Latency-budget search (prune.target_latency_ms)",
        "",
        f"Budget {search['budget_ms']:g} ms p50 at batch {method['batch']} on {method['provider']} "
        f"({method.get('settings', method.get('threads'))}), deployed form measured: "
        f"{' or '.join(method['formats'])}; a candidate must "
        f"measure ≤ {search['limit_ms']:.4g} ms (margin {search['margin']:g}). Candidates were pruned copies of the "
        f"student, exported and timed before any fine-tuning, each {method.get('repeats', 1)} time(s), the median "
        f"counting ({len(search['trace'])} in {search['seconds']:.1f} s).",
        "",
        f"Chosen ratio **{search['ratio']:g}**: predicted {search['predicted_ms']:.4f} ms, achieved after the "
        f"fine-tune {achieved['latency_ms']:.4f} ms ({achieved['format']}).",
    ]
    if not search["met"]:
        lines += ["", f"**Budget not reached**: {search['message']}."]
    rows = [
        [
            f"{e['ratio']:g}",
            _ms(e.get("fp32_ms")),
            _ms(e.get("int8_ms")),
            _measured(e),
            f"{e['macs']:,}",
            "yes" if e["meets_limit"] else "no",
        ]
        for e in search["trace"]
    ]
    lines += ["", "Search trace, in the order measured:", ""]
    return lines + _table(["ratio", "fp32 p50 ms", "int8 p50 ms", "deployed ms", "MACs", "meets limit"], rows)


def per_layer_search_section(search: dict[str, Any]) -> list[str]:
    """The per-layer search (pipeline/search/prune_layers.py): each group's chosen count, predicted vs achieved."""
    method, achieved, table = search["method"], search["achieved"], search["table"]
    entries = sum(len(row) - 1 for row in table.values()) + 1
    lines = [
        "",
        "## Latency-budget search (prune.target_latency_ms, per layer)",
        "",
        f"Budget {search['budget_ms']:g} ms p50 at batch {method['batch']} on {method['provider']} "
        f"({method['settings']}), deployed form measured: {' or '.join(method['formats'])}; a configuration must "
        f"measure ≤ {search['limit_ms']:.4g} ms (margin {search['margin']:g}). Latency table: {entries} pruned copies "
        f"of the student, each with one group reduced ({method['table']} for this machine and architecture in "
        f"{method.get('table_seconds', 0):.1f} s); "
        f"configurations chosen greedily on {step_cost(method)}, then measured "
        f"({len(search['trace'])} in {search['seconds']:.1f} s).",
        "",
        f"Chosen: **{search['ratio']:.1%}** of the groups' channels removed; additive prediction "
        f"{search['additive_ms']:.4f} ms, measured before the fine-tune {search['predicted_ms']:.4f} ms, achieved "
        f"after the fine-tune {achieved['latency_ms']:.4f} ms ({achieved['format']}).",
    ]
    if not search["met"]:
        lines += ["", f"**Budget not reached**: {search['message']}."]
    rows = [
        [
            name,
            str(search["full_channels"][name]),
            f"**{search['channels'][name]}**",
            ", ".join(f"{count}: {ms:.4f}" for count, ms in row.items()),
        ]
        for name, row in table.items()
    ]
    lines += ["", "Channels per group, with the table (channel count: p50 ms with only that group reduced):", ""]
    lines += _table(["group", "channels", "chosen", "table"], rows)
    trace = [
        [
            str(i),
            str(e.get("step", "–")),  # how many greedy steps from the full model (older decisions: not recorded)
            " ".join(f"{name}:{count}" for name, count in e["channels"].items()),
            f"{e['additive_ms']:.4f}",
            _measured(e),
            f"{e['macs']:,}",
            "yes" if e["meets_limit"] else "no",
            *([f"{e['validation']['accuracy']:.4f}"] if "validation" in e else []),
        ]
        for i, e in enumerate(search["trace"], 1)
    ]
    header = ["#", "greedy step", "channels", "additive ms", "measured ms", "MACs", "meets limit"]
    scored = any("validation" in e for e in search["trace"])
    lines += ["", "Configurations measured, in order (a miss before a meet is refined by bisecting the steps):", ""]
    return lines + _table(header + (["validation accuracy before fine-tune"] if scored else []), trace)


def step_cost(method: dict[str, Any]) -> str:
    """How the per-layer search costed its steps (a decision without `scoring` predates the validation score)."""
    scoring = method.get("scoring", {"score": "magnitude"})
    if scoring["score"] == "magnitude":
        return "the weight magnitude of the channels removed per ms the table saves (prune.search_score: magnitude)"
    return (
        f"the validation accuracy lost per ms the table saves, each configuration's BatchNorm statistics re-estimated "
        f"on {scoring['bn_images']} training images and no fine-tune (prune.search_score: validation; "
        f"{scoring['scored']} configurations scored in {scoring['seconds']:.1f} s)"
    )


def quantization_search_section(searches: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for name, search in searches.items():
        method = search["method"]
        isa = "with VNNI" if search["vnni"] else "without VNNI" if search["x86"] else "not x86"
        lines += [
            "",
            f"## Quantization variants of {name} (chosen on the validation split)",
            "",
            f"CPU {isa} ({', '.join(search['isa']) or 'no listed ISA flags'}); fp32 validation accuracy "
            f"{search['fp32_validation_accuracy']:.4f}; p50 at batch {method['batch']}, "
            f"{method.get('settings', method.get('threads'))}.",
            "",
        ]
        rows = [
            [
                ("**chosen** " if i == search["chosen"] else "") + v["method"],
                "per-channel" if v["per_channel"] else "per-tensor",
                v["activation_type"],
                str(v["reduce_range"]).lower(),
                f"{v['validation_accuracy']:.4f}",
                f"{v['p50_ms']:.4f}",
            ]
            for i, v in enumerate(search["variants"])
        ]
        lines += _table(["calibration", "weights", "activations", "reduce_range", "validation acc", "p50 ms"], rows)
    return lines


def int8_speed_section(report: dict[str, Any]) -> list[str]:
    """Each int8 model against its fp32 source at the edge choice's batch and provider: int8 is not always faster."""
    sources = report.get("int8_sources") or {}
    batch, provider = str(report["edge_choice"]["batch"]), report["edge_choice"]["provider"]
    models = {m["name"]: m for m in report["models"]}
    lines = []
    for int8, source in sources.items():
        p50 = [(models.get(name, {}).get("latency") or {}).get(provider, {}).get(batch, {}).get("p50_ms")
               for name in (int8, source)]  # fmt: skip
        if None in p50:
            continue
        verdict = "faster" if p50[0] < p50[1] else "slower"
        lines.append(
            f"- {int8}: p50 {p50[0]:.4f} ms against {p50[1]:.4f} ms for {source}, its fp32 source, at batch {batch} "
            f"on {provider}: int8 is {verdict} on this machine"
            + ("." if verdict == "faster" else "; the edge choice keeps the faster form where both pass the gates.")
        )
    return ["", "## int8 against its fp32 source", "", *lines] if lines else []


def quantization_aware_section(records: dict[str, dict[str, Any]]) -> list[str]:
    """What post-training int8 lost against its fp32 source, and whether the quantization-aware fine-tune ran."""
    if not records:
        return []
    first = next(iter(records.values()))
    lines = [
        "",
        "## Quantization-aware fine-tune (decided on the validation split)",
        "",
        f"quantize.qat: {first['mode']}; with auto it runs where post-training int8 loses more than "
        f"{first['max_drop']} of validation accuracy against its fp32 source, and the more accurate int8 file on "
        "validation is kept (post-training on a tie).",
        "",
    ]
    rows = []
    for cells, qat in zip(quantization_aware_rows(records), records.values(), strict=True):
        agreement = qat.get("agreement") or {}
        check = (
            f"logits within {agreement['max_logit_difference']:.2g} of their spread, top-1 differs on "
            f"{agreement['top1_disagreement']:.1%} of {agreement['images']}"
            if agreement
            else ""
        )
        rows.append([*cells, check])
    return lines + _table([*QUANTIZATION_AWARE_HEADER, "onnxruntime vs PyTorch"], rows)


QUANTIZATION_AWARE_HEADER = ["int8 model", "fp32", "post-training", "its drop", "quantization-aware", "kept"]


def quantization_aware_rows(records: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row of cells per int8 model, for report.md and report.html alike."""
    return [
        [name, f"{qat['fp32_validation_accuracy']:.4f}", f"{qat['ptq_validation_accuracy']:.4f}",
         f"{qat['ptq_drop']:+.4f}", f"{qat['qat_validation_accuracy']:.4f}" if qat["ran"] else "not run", qat["kept"]]
        for name, qat in records.items()
    ]  # fmt: skip


def search_sections(report: dict[str, Any]) -> list[str]:
    return (
        edge_choice_section(report)
        + latency_search_section(report.get("latency_search"))
        + quantization_search_section(report.get("quantization_search") or {})
        + quantization_aware_section(report.get("quantization_aware") or {})
        + int8_speed_section(report)
    )
