"""report.md sections for the choices edgeforge made: the edge model on the Pareto front, the latency-budget
search (latency_search_sections.py) and the quantization variants tried."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.depth_section import depth_arms_section
from pipeline.reporting.latency_search_sections import latency_search_section, ms, table


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
                ms(stats and stats["p50_ms"]),
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
    lines += table(header, rows)
    lines += [
        "",
        "As fast as the fastest: within signoff.latency_tie of the fastest p50 (only the fastest itself when it is 0), "
        "or within every latency limit of the sign-off (signoff.accurate_within_limits); "
        "a slower one of those wins only when its validation accuracy is higher beyond the noise (the 95% interval of "
        "the paired difference on the same validation images lies above 0). Pareto front: models no other model beats "
        f"on both validation accuracy and p50. {report['edge_model']} won: {report['edge_model_reason']}.",
        "",
        "Every choice of the run and the split it read:",
        "",
    ]
    choices = [[c["choice"], c["split"], c["by"]] for c in report.get("choices", [])]
    return lines + table(["choice", "split", "by"], choices)


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
        lines += table(["calibration", "weights", "activations", "reduce_range", "validation acc", "p50 ms"], rows)
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
    return lines + table([*QUANTIZATION_AWARE_HEADER, "onnxruntime vs PyTorch"], rows)


QUANTIZATION_AWARE_HEADER = ["int8 model", "fp32", "post-training", "its drop", "quantization-aware", "kept"]


def quantization_aware_rows(records: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row of cells per int8 model, for report.md and report.html alike."""
    return [
        [name, f"{qat['fp32_validation_accuracy']:.4f}", f"{qat['ptq_validation_accuracy']:.4f}",
         f"{qat['ptq_drop']:+.4f}", f"{qat['qat_validation_accuracy']:.4f}" if qat["ran"] else "not run", qat["kept"]]
        for name, qat in records.items()
    ]  # fmt: skip


def search_sections(report: dict[str, Any]) -> list[str]:
    search = report.get("latency_search")
    return (
        edge_choice_section(report)
        + latency_search_section(search, report.get("budget_from_teacher"), report.get("thread_probe"))
        + depth_arms_section((report.get("pruning") or {}).get("depth"), (search or {}).get("budget_ms"))
        + quantization_search_section(report.get("quantization_search") or {})
        + quantization_aware_section(report.get("quantization_aware") or {})
        + int8_speed_section(report)
    )
