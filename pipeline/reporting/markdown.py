"""report.md: the sign-off report as Markdown, from the report dict the report stage builds."""

from __future__ import annotations

from typing import Any

from pipeline.reporting.alternatives_section import pruned_is_alternative
from pipeline.reporting.intervals import accuracy_text
from pipeline.reporting.search_sections import search_sections
from pipeline.reporting.signoff_section import failing_lines
from pipeline.reporting.steps_section import steps_section
from pipeline.reporting.targets_section import target_descriptions, target_rows
from pipeline.reporting.timing_moved import held_text, moved_text
from pipeline.training.recipes import DISTILLED, LABELS_ALONE


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def latency_table(models: list[dict], provider: str) -> list[str]:
    batches = list(models[0]["latency"][provider])
    rows = []
    for m in models:
        row = [m["name"], m.get("settings_label", "")]
        for b in batches:
            stats = m["latency"][provider][b]
            spread = (
                ""
                if "spread" not in stats
                else f", spread {stats['spread']:.0%}" + ("" if stats["stable"] else " **unstable**")
            )
            p90, p99 = (f"{stats[f'{p}_ms']:.4f}{_interval(stats.get(f'{p}_ci_ms'))}" for p in ("p90", "p99"))
            row.append(f"{stats['p50_ms']:.4f} / {p90} / {p99}{spread}")
        rows.append(row)
    return _table(["model", "session settings", *[f"batch {b}" for b in batches]], rows)


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""  # a bench before bench VERSION 9 has no p99 interval


def method_text(method: dict[str, Any]) -> str:
    """The latency method in a sentence (older reports: the recorded method as it is)."""
    if "rounds" not in method:
        return str(method)
    per_round = method["per_round"]
    return (
        f"{method['rounds']} interleaved rounds ({method['order']}), each a fresh session warmed up by "
        f"{per_round['warmup_runs']} runs and {per_round['warmup_seconds']} s, then at least {per_round['min_runs']} "
        f"timed runs and {per_round['min_seconds']} s; a disturbed round ({method['disturbed_round']}) is re-measured "
        f"up to {method['retries']} times; {method['statistics']}. Session settings: {method['settings']}."
    )


def render_markdown(report: dict[str, Any]) -> str:
    signoff = report["signoff"]
    lines = [
        "# edgeforge sign-off report",
        "",
        f"**Sign-off: {'PASSED' if signoff['passed'] else 'FAILED'}.** Edge model: **{report['edge_model']}** "
        f"(`release/model.onnx`): {report['edge_model_reason']}.",
    ]
    lines += models_section(report)
    lines += targets_section(report)
    lines += search_sections(report)
    lines += steps_section(report)
    lines += gates_section(signoff["gates"])
    lines += failing_lines(report)
    lines += deploy_section(report)
    lines += environment_section(report)
    return "\n".join(lines) + "\n"


def models_section(report: dict[str, Any]) -> list[str]:
    """A row per model, then a latency table per provider measured and the providers skipped."""
    split = report["dataset"]["split"]
    target = (report.get("latency_target") or {}).get("name", "this machine")
    trained = student_run(report)
    lines = [
        "",
        "## Models (teacher → student → pruned → int8 of pruned; student_int8: int8 of the student"
        + ("" if trained == DISTILLED else f"; the student {trained}")
        + ")",
        "",
        f"Accuracy computed in onnxruntime, with its 95% Wilson interval, on the validation split "
        f"({split['validation']['images']} images held out of training: every choice reads it) and on the test split "
        "(reported only). Latency: each model at its own session settings, the fastest measured for it on the "
        f"latency target ({target}); " + method_text(report["bench_method"]),
        "",
    ]
    header = ["model", "validation accuracy", "test accuracy", "agrees with teacher", "params", "MACs", "size (bytes)"]
    rows = [
        [
            m["name"],
            accuracy_text(m["validation_accuracy"], m.get("validation_interval")),
            accuracy_text(m["accuracy"], m.get("accuracy_interval")),
            f"{m['agreement_with_teacher']:.4f}",
            f"{m['params']:,}",
            f"{m['macs']:,}",
            f"{m['size_bytes']:,}",
        ]
        for m in report["models"]
    ]
    lines += _table(header, rows)
    lines += teacher_lines(report)
    lines += ["", sentence] if (sentence := pruned_is_alternative(report)) else []
    for provider in report["models"][0]["latency"]:  # one latency table per provider measured
        lines += [
            "",
            f"Latency on {provider} (p50 / p90 / p99 ms; the p90's and p99's 95% intervals where measured):",
            "",
        ]
        lines += latency_table(report["models"], provider)
    lines += ["", f"**{moved}**"] if (moved := moved_text(report)) else []
    lines += ["", held] if (held := held_text(report)) else []
    skipped = report.get("skipped_providers") or {}
    return lines + ([""] if skipped else []) + [f"- {name}: skipped ({why})" for name, why in skipped.items()]


def student_run(report: dict[str, Any]) -> str:
    """How the student the later stages start from was trained (distill.baseline keeps the better run)."""
    if (report.get("distillation") or {}).get("kept") == LABELS_ALONE:
        return "on labels alone: more accurate on validation than distilled"
    return DISTILLED


def teacher_lines(report: dict[str, Any]) -> list[str]:
    """Where the teacher came from: an ONNX file and the preprocessing it expects, or how the PyTorch teacher was
    made (trained, fine-tuned from the user's weights, or used as it is) with the hash of those weights."""
    if report.get("teacher_onnx"):
        return ["", onnx_teacher_sentence(report["teacher_onnx"])]
    origin = report.get("teacher_origin")
    if not origin:
        return []
    weights = f" (teacher.weights sha256 {origin['weights_sha256']})" if origin.get("weights_sha256") else ""
    return ["", f"Teacher: {origin['summary']}{weights}."]


def onnx_teacher_sentence(onnx: dict[str, Any]) -> str:
    """The ONNX teacher's file, hash, input and preprocessing in a sentence (Markdown: names in backticks)."""
    (name, _, dims), *_ = onnx["input"]
    return (
        f"The teacher is the ONNX file `{onnx['file']}` (teacher.onnx, sha256 {onnx['sha256'][onnx['file']]}), used "
        f"as it is; MACs counted from its graph (Conv, Gemm, MatMul). Its input `{name}` {dims} expects "
        f"{onnx['preprocessing_text']}: a Mul and an Add per channel"
        + (" and a Transpose" if onnx["preprocessing"]["layout"] == "nhwc" else "")
        + " in front of it convert the pipeline's input"
        + (
            ", a Log after it turns its probabilities into logits"
            if onnx["preprocessing"]["output"] != "logits"
            else ""
        )
        + ", so it is fed, measured and scored like every model here."
    )


def targets_section(report: dict[str, Any]) -> list[str]:
    """Where latency was measured: each target described, and every model on every target side by side."""
    if not report.get("latency_target"):
        return []  # a report made before targets
    lines = [
        "",
        "## Where latency was measured",
        "",
        f"Models are compared and gated on **{report['latency_target']['name']}** (signoff.latency_target). Targets:",
        "",
    ]
    lines += [f"- {line}" for line in target_descriptions(report)]
    table = target_rows(report)
    if table:
        batch = report["config"]["signoff"]["latency_batch"]
        lines += ["", f"Every target at batch {batch} on the CPU, each model at the settings tuned there:", ""]
        lines += _table(*table)
    return lines


def gates_section(gates: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            g["name"],
            f"{g['limit']:g}",
            "not measured" if g["value"] is None else f"{g['value']:.4g}",
            f"{g['compares']} on the {g['split']} split" if g.get("split") else g.get("compares", ""),
            "pass" if g["passed"] else "**FAIL**",
        ]
        for g in gates
    ]
    return ["", "## Gates", ""] + _table(["gate", "limit", "value", "compares", "verdict"], rows)


def deploy_section(report: dict[str, Any]) -> list[str]:
    data = report["dataset"]
    edge = next(m for m in report["models"] if m["name"] == report["edge_model"])
    memory = edge.get("memory")
    lines = [
        "",
        "## Deploying the edge model",
        "",
        f"Input `{report['input']['name']}`: {report['input']['dtype']} of shape {report['input']['shape']} "
        f"(dynamic batch). Preprocessing: {data['preprocessing']}, with mean {data['mean']} and std {data['std']} "
        f"(from the training split). Output `logits`, classes in order: {', '.join(data['class_names'])}.",
    ]
    if "settings" in edge:
        lines += [
            "",
            f"Session options measured fastest for it on the latency target, and shipped in `release/deploy.json`: "
            f"{edge['settings_label']} ({edge['settings']}).",
        ]
    if memory:
        lines += [
            "",
            f"Memory: a fresh process running it peaks at {memory['peak_rss_mb']} MB resident "
            f"({memory['baseline_rss_mb']} MB for Python with numpy and onnxruntime, {memory['model_rss_mb']} MB more "
            "for the model and its session).",
        ]
    return lines + [
        "",
        "`release/` runs by itself: `python release/predict.py IMAGE_OR_FOLDER [--top K] [--json]` needs only "
        "onnxruntime, numpy and Pillow, and preprocesses as this report was measured (`edgeforge predict` runs the "
        "same code).",
    ]


def environment_section(report: dict[str, Any]) -> list[str]:
    """Where the numbers were measured, the artifacts' hashes, and how to reproduce the run."""
    data = report["dataset"]
    lines = ["", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in report["environment"].items()]
    lines += [f"- machine identity (in the keys of the stages that measure): {report.get('machine')}"]
    lines += [f"- latency method: {method_text(report['bench_method'])}"]
    lines += ["", "## Artifacts", ""]
    lines += _table(
        ["model", "path (under artifacts/)", "sha256"], [[m["name"], m["path"], m["sha256"]] for m in report["models"]]
    )
    lines += ["", "## Reproduce", "", "```", report["reproduce"], "```"]
    return lines + ["", f"Dataset: {data['name']}, source sha256 {data['source_sha256']}, split {data['split']}."]
