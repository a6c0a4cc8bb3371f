"""report.md's "What each step bought": the PyTorch accuracies of the training stages, with 95% intervals, what each
pruning step removed and what its fine-tune recovered, the networks tried beside it, the timings taken again, the
quantization arguments and the export check."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.alternatives_section import alternatives_lines
from pipeline.reporting.depth_section import depth_lines
from pipeline.reporting.intervals import both_splits_text
from pipeline.reporting.timed_again import timed_again_lines
from pipeline.training.recipes import LABELS_ALONE


def _gradual_text(steps: list[dict[str, Any]]) -> str:
    """The gradual schedule (prune.steps > 1): each step's share removed, its fine-tune and validation accuracy."""
    if len(steps) < 2:
        return ""
    return f"; gradually, in {len(steps)} steps (right after pruning → after each step's fine-tune, validation): " + (
        ", ".join(
            f"{s['ratio']:.1%} + {s['epochs']} epochs: {s['before_finetune']['validation_accuracy']:.4f} → "
            f"{s['after_finetune']['validation_accuracy']:.4f}"
            for s in steps
        )
    )


def _finetune_features_text(features: dict[str, Any] | None) -> str:
    """What the prune fine-tune distilled beside the logits (prune.feature_loss), or nothing for logits alone."""
    if not features:
        return ""
    layers = f" on {', '.join(features['layers'])}" if features["layers"] else " on the stage boundaries"
    return f" (with the {features['kind']} feature loss ×{features['weight']:g}{layers})"


def scratch_epochs_text(scratch: int, distill: int, finetune: int, configured: int | None) -> str:
    """The scratch baseline's epochs, and what set them: prune.scratch_epochs (`configured`), or when that is null
    distill's epochs plus prune.finetune_epochs (`finetune`), as train_from_scratch sets them. Said beside the
    fine-tune's own: a short fine-tune against a long scratch run decides the comparison (on CIFAR-10, 5 fine-tune
    epochs lost to 15 from scratch where 15 tied 25; BENCHMARKS.md, "How long the fine-tune runs")."""
    if configured is None:
        return f"{scratch} epochs (as many as distill's {distill} and the fine-tune's {finetune} together)"
    return f"{scratch} epochs (prune.scratch_epochs; distill {distill}, the fine-tune {finetune})"


def steps_section(report: dict[str, Any]) -> list[str]:
    distill, prune = report["distillation"], report["pruning"]
    features = distill.get("feature_distillation")
    how = f"T={distill['temperature']}, α={distill['alpha']}" + (
        f", {features['kind']} feature loss ×{features['weight']:g} on {len(features['layer_pairs'])} layer pairs "
        f"({', '.join(':'.join(pair) for pair in features['layer_pairs'])})"
        if features
        else ""
    )
    scratch = prune.get("scratch")
    finetune_epochs = sum(step["epochs"] for step in prune["steps"])  # with prune.step_epochs, more than the setting
    settings = report["config"]["prune"]
    scratch_epochs = (
        None
        if scratch is None
        else scratch_epochs_text(
            scratch["epochs"], distill["epochs"], settings["finetune_epochs"], settings["scratch_epochs"]
        )
    )
    finetune_features = _finetune_features_text(prune.get("finetune_features"))
    return [
        "",
        "## What each step bought",
        "",
        "PyTorch accuracies of the training stages, with 95% intervals:",
        "",
        f"- Distillation ({how}): the student without the teacher {both_splits_text(distill['baseline'])}"
        + (" (distill.baseline: false)" if distill["baseline"] is None else "")
        + f"; distilled {both_splits_text(distill['student'])}"
        + (
            ". On labels alone it was more accurate on validation, so that run is the student the later stages start "
            "from (a teacher little better than the student can hold it back)."
            if distill.get("kept") == LABELS_ALONE
            else "."
        ),
        *depth_lines(prune.get("depth")),
        f"- Pruning ({prune['ratio']:.1%} of channels): params {prune['params_before']:,} → "
        f"{prune['steps'][-1]['params']:,}, MACs {prune['macs_before']:,} → {prune['steps'][-1]['macs']:,}; right "
        f"after pruning {both_splits_text(prune['before_finetune'])}; "
        f"after the {finetune_epochs}-epoch distillation fine-tune{finetune_features} "
        f"{both_splits_text(prune['after_finetune'])}" + _gradual_text(prune["steps"]) + ".",
        "- The pruned architecture trained from scratch with distillation "
        + (
            "was not trained (prune.scratch_baseline: false)."
            if scratch is None
            else f"for {scratch_epochs}: "
            + both_splits_text(scratch)
            + (
                "; more accurate on validation than the fine-tune, so it is the pruned model that ships."
                if prune.get("shipped") == "from scratch"
                else "."
            )
        ),
        *alternatives_lines(prune.get("alternatives")),
        *timed_again_lines(report),
        "- Quantization arguments (onnxruntime quantize_static): "
        + ", ".join(f"{k}={v}" for k, v in report["quantization"].items())
        + ".",
        f"- Export check: onnxruntime vs PyTorch within atol {report['export_tolerance']['atol']}, "
        f"rtol {report['export_tolerance']['rtol']} at batch 1 and N"
        + (" (not the teacher: it is the ONNX file it was given, copied)." if report.get("teacher_onnx") else "."),
    ]
