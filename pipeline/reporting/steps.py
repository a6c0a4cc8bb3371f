"""What each training step bought, as the stages recorded it, and which split every choice of a run reads: the
report's sections on distillation, depth and channel pruning, quantization and the searches (stages/report.py
writes them into report.json; markdown.py and html.py render them)."""

from __future__ import annotations

from typing import Any

from pipeline.cache import Artifact
from pipeline.reporting import timed_again
from pipeline.reporting.intervals import accuracies_with_intervals
from pipeline.training.recipes import DISTILLED

# Every choice the pipeline makes and the data it reads: the test split decides nothing.
CHOICES = [
    {"choice": "edge model", "split": "validation", "by": "accuracy gates, then latency; accuracy only beyond noise"},
    {"choice": "quantization variant (quantize.search)", "split": "validation", "by": "accuracy, then latency"},
    {
        "choice": "residual blocks removed (prune.drop_blocks)",
        "split": "validation",
        "by": "accuracy kept without each, BatchNorm re-estimated, one block at a time",
    },
    {
        "choice": "how many of them (prune.drop_blocks: auto)",
        "split": "validation",
        "by": "after each depth's search and fine-tune, the most accurate within the search's limit, then the budget",
    },
    {"choice": "pruning ratio (prune.target_latency_ms, uniform search)", "split": "none", "by": "measured latency"},
    {
        "choice": "channels per group (prune.search: per_layer, sampled)",
        "split": "validation",
        "by": "measured latency; sampled, or search_score validation: validation accuracy before fine-tune",
    },
    {
        "choice": "per-layer or uniform pruning (prune.uniform_baseline)",
        "split": "validation",
        "by": "after the fine-tune, the more accurate within the search's limit, then the budget",
    },
    {
        "choice": "pruned model fine-tuned or trained from scratch (prune.scratch_baseline)",
        "split": "validation",
        "by": "the same architecture: the more accurate, the fine-tune on a tie",
    },
    {
        "choice": "the student distilled or trained on labels alone (distill.baseline)",
        "split": "validation",
        "by": "the same network: the more accurate, the distilled on a tie",
    },
    {
        "choice": "another network distilled or trained on labels alone (prune.alternatives, distill.baseline)",
        "split": "validation",
        "by": "the same network: the more accurate, the distilled on a tie",
    },
    {
        "choice": "the pruned model or another network trained whole (prune.alternatives)",
        "split": "validation",
        "by": "within the search's limit (else the budget), the most accurate; the pruned model on a tie",
    },
    {"choice": "accuracy gates of the edge choice", "split": "validation", "by": "signoff.accuracy_basis"},
    {"choice": "sign-off gates", "split": "test", "by": "the report's verdict, after every choice was made"},
]


def _depth(depth: dict[str, Any] | None) -> dict[str, Any] | None:
    """The blocks prune.drop_blocks removed, each with the validation accuracy left when it went, or None; with auto
    also each depth it tried ("arms"), the one kept ("chosen") and why it went no deeper ("stopped")."""
    if depth is None:
        return None
    removed = depth["steps"][: len(depth["blocks"])]  # auto scored every block's turn; the chosen depth's go
    chosen = [{"block": step["dropped"], **step["weighed"][step["dropped"]]} for step in removed]
    auto = {key: depth[key] for key in ("arms", "chosen", "stopped") if key in depth}
    kept = {key: depth[key] for key in ("droppable", "before", "shipped")}
    return {"blocks": chosen, **kept, **auto}


def _alternatives(records: list[dict[str, Any]] | None, sizes: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Each of prune.alternatives: its size, its latency untrained and (trained) after training, and its accuracies
    with intervals; "trained" false when it measured over the budget whole."""
    if records is None:
        return None
    shown = []
    for record in records:
        row = {key: record[key] for key in ("model", "macs", "params", "trained", "shipped")}
        row["untrained_ms"] = record["untrained"]["latency_ms"]
        row["widths"] = record.get("widths")  # auto's widths timed untrained (prune VERSION 19)
        row["limit_ms"] = record.get("limit_ms")  # held to the search's limit (prune VERSION 26), before: the budget
        row["budget_ms"] = record.get("budget_ms")  # the budget it was decided against (prune VERSION 27)
        if record["trained"]:
            row.update(epochs=record["epochs"], achieved_ms=record["achieved"]["latency_ms"])
            row["format"] = record["achieved"]["format"]
            row.update(accuracies_with_intervals(record["validation_accuracy"], record["test_accuracy"], sizes))
            labels = record.get("without_teacher")  # distill.baseline (prune VERSION 21), and which of the two is kept
            row["without_teacher"] = labels and accuracies_with_intervals(
                labels["validation_accuracy"], labels["test_accuracy"], sizes
            )
            row["kept"] = record.get("kept", DISTILLED)
        shown.append(row)
    return shown


def what_each_step_did(inputs: dict[str, Artifact]) -> dict[str, Any]:
    """Distillation, pruning, quantization and the searches, as their stages recorded them, the baselines that say
    what each step bought, and training curves. Accuracies here are PyTorch's; the models table has onnxruntime's."""
    distill, prune_metrics, quantize_metrics = (inputs[name].metrics for name in ("distill", "prune", "quantize"))
    distill_params = inputs["distill"].manifest["params"]
    sizes = inputs["data"].metrics
    scratch = prune_metrics["scratch"]
    return {
        "distillation": {
            "student": accuracies_with_intervals(distill["validation_accuracy"], distill["test_accuracy"], sizes),
            "baseline": accuracies_with_intervals(
                distill["baseline_validation_accuracy"], distill["baseline_test_accuracy"], sizes
            ),
            "temperature": distill_params["temperature"],
            "alpha": distill_params["alpha"],
            "epochs": distill_params["epochs"],  # what the scratch baseline's epochs are set against
            "feature_distillation": distill["feature_distillation"],
            "kept": distill.get("kept", DISTILLED),  # the run the later stages start from (distill VERSION 3)
        },
        "pruning": {
            **{key: prune_metrics[key] for key in ("ratio", "params_before", "params", "macs_before", "macs")},
            "before_finetune": accuracies_with_intervals(
                prune_metrics["validation_accuracy_before_finetune"],
                prune_metrics["test_accuracy_before_finetune"],
                sizes,
            ),
            "after_finetune": accuracies_with_intervals(
                *(
                    prune_metrics["steps"][-1]["after_finetune"][f"{split}_accuracy"]
                    for split in ("validation", "test")
                ),
                sizes,
            ),
            # "fine-tuned" or "from scratch" (prune.scratch_baseline), or "alternative" (prune.alternatives)
            "shipped": prune_metrics["shipped"],
            # prune.feature_loss as resolved ({kind, weight, layers} or None); absent in entries from before it
            "finetune_features": prune_metrics.get("finetune_features"),
            "depth": _depth(prune_metrics.get("depth")),  # prune.drop_blocks; None in entries from before it
            "steps": [
                {
                    **{key: step[key] for key in ("step", "ratio", "epochs", "params", "macs")},
                    **{
                        when: accuracies_with_intervals(
                            step[when]["validation_accuracy"], step[when]["test_accuracy"], sizes
                        )
                        for when in ("before_finetune", "after_finetune")
                    },
                }
                for step in prune_metrics["steps"]
            ],
            "scratch": None
            if scratch is None
            else {
                "epochs": scratch["epochs"],
                **accuracies_with_intervals(scratch["validation_accuracy"], scratch["test_accuracy"], sizes),
            },
            # prune.alternatives; None without a budget or in entries from before it
            "alternatives": _alternatives(prune_metrics.get("alternatives"), sizes),
            # timings over the budget taken again (prune VERSION 24): pipeline/search/retime.py
            "timed_again": timed_again.gathered(prune_metrics),
        },
        "quantization": quantize_metrics["arguments"],
        "quantization_search": {name: m["search"] for name, m in quantize_metrics["models"].items() if m["search"]},
        "quantization_aware": {name: m["qat"] for name, m in quantize_metrics["models"].items() if m.get("qat")},
        "int8_sources": {name: m["source"].removesuffix(".onnx") for name, m in quantize_metrics["models"].items()},
        "latency_search": prune_metrics["latency_search"],
        "training": {
            "teacher": inputs["teacher"].metrics["history"],
            "student": distill["history"],
            "student_without_teacher": distill["baseline_history"],
            "pruned_finetune": prune_metrics["history"],
            "pruned_from_scratch": None if scratch is None else scratch["history"],
            **{
                f"alternative {record['model']}": record["history"]
                for record in prune_metrics.get("alternatives") or ()
                if record["trained"]
            },
            **{
                f"alternative {record['model']} without teacher": record["without_teacher"]["history"]
                for record in prune_metrics.get("alternatives") or ()
                if (record.get("without_teacher") or {}).get("history")
            },
        },
        "export_tolerance": inputs["export"].metrics["tolerance"],
    }
