"""The HTML sign-off page: Pareto front, content, escaping, no network references, and a headless render."""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.reporting.gates import choose_edge_model, gates_each_model_fails, pareto_front, signoff_gates
from pipeline.reporting.html import render_html
from pipeline.reporting.markdown import latency_table
from stages.bench import PROVIDER
from stages.report import Params
from tests.stages.test_report import scores

CLASSES = ["cat", "<script>alert(1)</script>", "dog & co"]
CHROMIUM = Path("/usr/bin/chromium")


def latency(p50: float, optional: bool) -> dict:
    """Latency at batches 1 and 8; `optional` adds the fields newer bench stages write (CI, histogram, ...)."""
    out = {}
    for batch, scale in (("1", 1.0), ("8", 5.0)):
        p = p50 * scale
        stats = {"p50_ms": p, "p90_ms": p * 1.3, "p99_ms": p * 2.0, "mean_ms": p * 1.1, "runs": 200}
        if optional:
            edges = [p * (0.8 + 0.2 * i) for i in range(8)]
            stats |= {
                "p95_ms": p * 1.5,
                "std_ms": p * 0.2,
                "min_ms": p * 0.8,
                "max_ms": p * 2.2,
                "throughput_ips": 1000 * int(batch) / p,
                "p90_ci_ms": [p * 1.25, p * 1.35],
                "histogram": {"edges_ms": edges, "counts": [5, 60, 70, 30, 15, 12, 8]},
            }
            if batch == "1":  # bench VERSION 9 measures the p99's interval; a table from an older one has none
                stats["p99_ci_ms"] = [p * 1.9, p * 2.1]
        out[batch] = stats
    return {PROVIDER: out}


def model(name: str, accuracy: float, p50: float, size: int, optional: bool = True) -> dict:
    return {
        "name": name,
        "path": f"cache/export/abc/{name}.onnx",
        "sha256": f"{len(name):064x}",
        "params": size // 4,
        "macs": size * 25,
        "size_bytes": size,
        **scores("test", accuracy),
        **scores("validation", accuracy),
        "agreement_with_teacher": min(1.0, accuracy + 0.005),
        "per_class_accuracy": [accuracy, accuracy - 0.02, min(1.0, accuracy + 0.02)],
        "confusion_matrix": [[30, 1, 0], [2, 28, 1], [0, 0, 31]],
        "latency": latency(p50, optional),
    }


def history(epochs: int, kd: bool) -> list[dict]:
    return [
        {
            "epoch": e,
            "loss": 2.0 / e,
            "ce": 1.5 / e,
            "kd": 0.5 / e if kd else 0.0,
            "train_accuracy": 1 - 0.5 / e,
            "seconds": 0.5,
            "images_per_s": 3000.0,
            "lr": 0.1,
        }
        for e in range(1, epochs + 1)
    ]


def synthetic_report(optional: bool = True, **signoff: float) -> dict:
    """A small but complete report.json, gates and edge model computed by the report stage's own rules."""
    models = [
        model("teacher", 0.99, 1.0, 400_000, optional),
        model("student", 0.98, 0.3, 40_000, optional),
        model("pruned", 0.97, 0.2, 20_000, optional),
        model("int8", 0.95, 0.1, 17_000, optional),
        model("student_int8", 0.975, 0.25, 22_000, optional),
    ]
    params = Params(**signoff)
    edge, passing, _ = choose_edge_model(models, params)
    gates = signoff_gates(edge, models, params)
    return {
        "config": {"signoff": dataclasses.asdict(params)},
        "environment": {"cpu": "Test CPU", "cores": 2, "threads": 2, "isa": ["avx2", "fma"]},
        "session_options": {"intra_op_num_threads": 2},
        "bench_method": {"warmup_runs": 2, "min_runs": 20, "min_seconds": 0},
        "models": models,
        "edge_model": edge["name"],
        "edge_model_reason": "fastest passing (see https://example.invalid/docs)",
        "signoff": {
            "passed": bool(passing) and all(g["passed"] for g in gates),
            "gates": gates,
            "failed_by_model": gates_each_model_fails(models, params),
        },
        "training": {
            "teacher": history(6, kd=False),
            "student": history(6, kd=True),
            "student_without_teacher": history(6, kd=False) if optional else None,
            "pruned_finetune": history(3, kd=True),
        },
        "dataset": {"name": "imagefolder", "class_names": CLASSES},
        "reproduce": "edgeforge run --set 'signoff.min_accuracy=0.9'",
    }


def hand_model(name: str, accuracy: float, p50: float) -> dict:
    latencies = {PROVIDER: {"1": {"p50_ms": p50}}}
    return {"name": name, "accuracy": 1 - accuracy, "validation_accuracy": accuracy, "latency": latencies}


def test_pareto_front_drops_dominated_models_and_keeps_ties():
    models = [
        hand_model("big", 0.99, 1.0),
        hand_model("mid", 0.98, 0.3),
        hand_model("slow_and_worse", 0.97, 0.5),  # mid is better in both
        hand_model("same_speed_worse", 0.96, 0.3),  # as fast as mid, less accurate
        hand_model("fast", 0.90, 0.1),
        hand_model("twin_a", 0.95, 0.2),  # identical twins: neither dominates the other
        hand_model("twin_b", 0.95, 0.2),
    ]
    assert pareto_front(models) == ["big", "mid", "fast", "twin_a", "twin_b"]


def test_pareto_front_uses_the_batch_asked_and_skips_models_without_it():
    models = [hand_model("a", 0.9, 1.0), hand_model("b", 0.8, 2.0)]
    models[1]["latency"][PROVIDER]["4"] = {"p50_ms": 0.5}
    assert pareto_front(models) == ["a"]
    assert pareto_front(models, batch="4") == ["b"]
    assert pareto_front(models, provider="CUDAExecutionProvider") == []


@pytest.mark.parametrize("optional", [True, False], ids=["all-fields", "no-optional-fields"])
def test_page_holds_verdict_models_plots_gates_and_is_self_contained(optional):
    report = synthetic_report(optional)
    page = render_html(report)
    assert report["signoff"]["passed"] and "Sign-off PASSED" in page
    assert all(f">{m['name']}" in page for m in report["models"])
    assert page.count("<svg") >= 5  # accuracy/latency, distributions, size/MACs, training, per-class
    assert all(g["name"] in page for g in report["signoff"]["gates"])
    assert ("bs1 p90 95% CI" in page) is optional and ("bs8 p90 95% CI" in page) is optional
    assert ("bs1 p99 95% CI" in page) is optional and "bs8 p99 95% CI" not in page
    # Every string from the report is escaped; nothing can run or load.
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "dog &amp; co" in page
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page) and "@import" not in page
    # The only URL is the one the report itself carries, escaped as text.
    assert re.findall(r"https?://[^\s<\"')]*", page) == ["https://example.invalid/docs"]


def test_report_md_gives_the_p90s_and_p99s_intervals_where_the_bench_measured_them():
    text = "\n".join(latency_table(synthetic_report()["models"], PROVIDER))
    # the student at batch 1 (p50 0.3), then at batch 8 (an older bench's table: the p90's interval only)
    batch_1 = "0.3000 / 0.3900 [0.375, 0.405] / 0.6000 [0.570, 0.630]"
    assert f"| student |  | {batch_1} | 1.5000 / 1.9500 [1.875, 2.025] / 3.0000 |" in text


def test_failed_signoff_shows_red_banner_and_failing_gate():
    report = synthetic_report(max_size_bytes=1000)
    page = render_html(report)
    assert not report["signoff"]["passed"]
    assert 'class="verdict failed"' in page and "Sign-off FAILED" in page
    assert "Failed gates: max_size_bytes" in page
    # Every model against the gates, fewest failed first: the teacher fails the size alone, int8 two drops as well.
    table = page[page.index("<h3>Every model against the gates</h3>") :]
    assert table.index("<td>teacher</td>") < table.index("<td>int8</td>")
    assert "<td>max_size_bytes 400,000 against 1,000</td>" in table
    assert "<td>max_drop_vs_teacher 0.04 against 0.03; max_drop_vs_student 0.03 against 0.02; max_size_bytes" in table
    assert "Every model against the gates" not in render_html(synthetic_report())  # a pass needs no such table


def test_figure_ids_are_unique_within_the_page():
    ids = re.findall(r'\bid="([^"]+)"', render_html(synthetic_report()))
    assert ids and len(ids) == len(set(ids))


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(render_html(synthetic_report()))
    profile = tmp_path / "profile"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    command += ["--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    command += [f"--screenshot={png}", "--window-size=1200,3000", page.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    assert png.exists(), "chromium wrote no screenshot"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_training_curves_take_more_stages_than_there_are_colours():
    """Each trained prune.alternatives adds a curve (two with distill.baseline): colours repeat, the page is drawn."""
    from pipeline.reporting import plots

    history = [{"epoch": epoch, "loss": 1.0 / epoch, "train_accuracy": 0.1 * epoch} for epoch in (1, 2)]
    figure = plots.training_curves({f"alternative resnet8_s2 x{width}": history for width in range(12)})
    assert len(figure.axes[0].lines) == 12
