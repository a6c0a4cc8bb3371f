import math

import pytest
import torch

from pipeline.training.losses import kd_loss


def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.5, -1.0]])
    teacher = torch.tensor([[1.0, 3.0, 0.0]])
    labels = torch.tensor([0])
    t, alpha = 2.0, 0.7

    def softmax(xs):
        exps = [math.exp(x / t) for x in xs]
        return [e / sum(exps) for e in exps]

    p_teacher, p_student = softmax([1.0, 3.0, 0.0]), softmax([2.0, 0.5, -1.0])
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student, strict=True))
    ce = -math.log(math.exp(2.0) / sum(math.exp(x) for x in [2.0, 0.5, -1.0]))

    losses = kd_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert losses["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert losses["kd"].item() == pytest.approx(t * t * kl, rel=1e-6)
    assert losses["total"].item() == pytest.approx((1 - alpha) * ce + alpha * t * t * kl, rel=1e-6)


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    losses = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0)
    assert losses["total"].item() == pytest.approx(torch.nn.functional.cross_entropy(student, labels).item())
    assert losses["kd"].item() == 0.0


def test_kd_term_is_zero_when_student_matches_teacher_and_grows_otherwise():
    logits = torch.randn(8, 10)
    labels = torch.zeros(8, dtype=torch.long)
    assert kd_loss(logits, logits, labels, 4.0, 1.0)["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.flip(1), labels, 4.0, 1.0)["kd"].item() > 0.01


def test_distill_stage_records_both_parts_and_the_baseline(tiny_run):
    _, results = tiny_run
    metrics = results["distill"].artifact.metrics
    assert metrics["params"] < results["teacher"].artifact.metrics["params"] / 3  # clearly smaller student
    assert all(row["kd"] > 0 and row["ce"] > 0 for row in metrics["history"])
    assert all(row["kd"] == 0 for row in metrics["baseline_history"])
    assert 0.5 < metrics["baseline_test_accuracy"] <= 1.0
    assert 0.5 < metrics["baseline_validation_accuracy"] <= 1.0
    assert metrics["test_accuracy"] > 0.8 and metrics["validation_accuracy"] > 0.8
    assert metrics["feature_distillation"] is None  # logit KD alone by default
    assert all(row["feature"] == 0 for row in metrics["history"])


@pytest.mark.parametrize("kind", ["hint", "attention"])
def test_feature_distillation_adds_its_loss_and_records_the_layer_pairs(tmp_path, kind):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline
    from tests.conftest import FAST

    sets = [*FAST, f"distill.feature_loss={kind}", "distill.epochs=1"]
    artifact = run_pipeline(load_config(overrides=sets), ArtifactStore(tmp_path), target="distill")[-1].artifact
    metrics = artifact.metrics
    assert metrics["feature_distillation"]["kind"] == kind
    assert metrics["feature_distillation"]["layer_pairs"] == [["1", "1"], ["3", "3"]]  # cnn -> cnn: both boundaries
    assert all(row["feature"] > 0 for row in metrics["history"])
    assert set(artifact.manifest["files"]) == {"model.pt", "model.json"}  # adapters train, then are dropped


def test_the_student_starts_from_a_state_dict_with_a_new_head(tmp_path):
    """distill.weights with another class count: the body loads, a new classifier for the data's 10 classes."""
    from pipeline.cache import ArtifactStore
    from pipeline.models.factory import build_model
    from pipeline.models.spec import ModelSpec
    from pipeline.runner import load_config, run_pipeline
    from tests.conftest import FAST

    path = tmp_path / "student.pt"
    torch.save(build_model(ModelSpec("cnn", 8, 1, 100, (8, 8))).state_dict(), path)
    sets = [*FAST, "distill.epochs=1", "distill.baseline=true", f"distill.weights={path}", "distill.reinit_head=true"]
    artifact = run_pipeline(load_config(overrides=sets), ArtifactStore(tmp_path / "a"), target="distill")[-1].artifact
    assert artifact.metrics["start"] == "from student.pt" and "cnn x8 from student.pt" in artifact.metrics["summary"]
    assert artifact.metrics["baseline_validation_accuracy"] is not None


@pytest.mark.parametrize(("labels_alone", "kept"), [(1.0, "labels alone"), (0.5, "distilled"), (0.25, "distilled")])
def test_with_distill_baseline_the_more_accurate_run_on_validation_is_the_student_saved(
    tmp_path, monkeypatch, labels_alone, kept
):
    """Training stubbed: the labels-alone run marks its weights and scores `labels_alone` on validation, the distilled
    one 0.5. The more accurate is saved as model.pt, the distilled on a tie, and the record and report say which."""
    import stages.distill
    from pipeline.cache import ArtifactStore
    from pipeline.models.storage import load_model
    from pipeline.runner import load_config, run_pipeline
    from tests.conftest import FAST

    def fit(model, images, labels, norm, recipe, teacher, name, *args):
        if teacher is None:
            next(model.parameters()).data.fill_(0.125)
        return [{"epoch": 1, "loss": 1.0, "ce": 1.0, "kd": 0.0 if teacher is None else 1.0, "feature": 0.0}]

    def scored(model, dataset):
        validation = labels_alone if bool((next(model.parameters()) == 0.125).all()) else 0.5
        return {"validation_accuracy": validation, "test_accuracy": validation / 2}

    monkeypatch.setattr(stages.distill, "fit", fit)
    monkeypatch.setattr(stages.distill, "scored", scored)
    sets = [*FAST, "distill.baseline=true"]
    results = {r.name: r for r in run_pipeline(load_config(overrides=sets), ArtifactStore(tmp_path), target="distill")}
    metrics = results["distill"].artifact.metrics
    assert metrics["kept"] == kept and (metrics["validation_accuracy"], metrics["test_accuracy"]) == (0.5, 0.25)
    assert (metrics["baseline_validation_accuracy"], metrics["baseline_test_accuracy"]) == (
        labels_alone,
        labels_alone / 2,
    )
    model, _ = load_model(results["distill"].artifact.path)
    assert bool((next(model.parameters()) == 0.125).all()) == (kept == "labels alone")
    assert metrics["summary"].endswith(
        f"(without teacher {labels_alone:.4f}{', kept' if kept == 'labels alone' else ''})"
    )


def test_the_report_says_which_run_is_the_student(tiny_run):
    """The tiny run's report, with the distilled run kept and with the labels-alone run kept."""
    import json

    from pipeline.reporting import plots
    from pipeline.reporting.html import render_html
    from pipeline.reporting.markdown import render_markdown

    _, results = tiny_run
    report = json.loads(results["report"].artifact.file("report.json").read_text())
    assert report["distillation"]["kept"] in ("distilled", "labels alone")  # distill VERSION 3 records it
    report["distillation"]["kept"] = "distilled"
    assert "## Models (teacher → student → pruned → int8 of pruned; student_int8: int8 of the student)" in (
        render_markdown(report)
    )
    assert "<p>Teacher → student (distilled) → pruned" in render_html(report)
    baseline = {"validation_accuracy": 0.9, "validation_interval": [0.8, 0.95], "test_accuracy": 0.85}
    baseline["test_interval"] = [0.8, 0.9]
    report["distillation"].update(kept="labels alone", baseline=baseline)
    markdown = render_markdown(report)
    assert "int8 of the student; the student on labels alone: more accurate on validation than distilled)" in markdown
    assert ". On labels alone it was more accurate on validation, so that run is the student the later stages" in (
        markdown
    )
    assert "| the student distilled or trained on labels alone (distill.baseline) | validation |" in markdown
    assert "<p>Teacher → student (on labels alone: more accurate on validation than distilled) → pruned" in (
        render_html(report)
    )
    student = report["distillation"]["student"]["validation_accuracy"]
    assert ("student distilled", "student", student) in plots.baselines(report)
    report["distillation"]["kept"] = "distilled"
    assert ("student without teacher", "student", 0.9) in plots.baselines(report)
