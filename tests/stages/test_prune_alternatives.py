"""prune.alternatives in the prune stage: the student's stride-2 variant trained whole beside the pruned student, and
the more accurate on validation within the search's limit (then the budget) shipped
(pipeline/training/prune_alternatives.py)."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.models.factory import count_macs_and_params
from pipeline.models.storage import load_model
from pipeline.runtime import environment
from pipeline.search import prune_budget
from pipeline.training import prune_alternatives
from tests.stages.prune_runs import probe_timing, run_prune

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("short_search_timing")]

RESNET = ["distill.model=resnet8", "distill.width=4", "prune.scratch_baseline=false", "prune.target_format=fp32"]


def test_the_stride_2_variant_is_trained_whole_by_distills_recipe_and_the_more_accurate_ships(store):
    results = run_prune(store, *RESNET, "prune.target_latency_ms=1000", "distill.baseline=true", target="report")
    metrics = results["prune"].artifact.metrics
    (record,) = metrics["alternatives"]
    # auto: resnet8_s2 at 8, 6, 4, 3 and 2 channels (twice the student's to half); 8, the widest, is within the limit
    assert record["model"] == "resnet8_s2 x8" and record["trained"]
    labels = record["without_teacher"]  # distill.baseline: trained again, as long, on labels alone
    assert labels["epochs"] == record["epochs"] == len(labels["history"])
    assert all(row["kd"] == 0 for row in labels["history"]) and 0 <= labels["validation_accuracy"] <= 1
    won = labels["validation_accuracy"] > record["validation_accuracy"]  # the more accurate, the distilled on a tie
    assert record["kept"] == ("labels alone" if won else "distilled")
    assert record["widths"] == [{"width": 8, "latency_ms": record["untrained"]["latency_ms"]}]
    assert record["untrained"]["latency_ms"] <= 1000 and record["achieved"]["latency_ms"] <= 1000
    distill = results["distill"].artifact.manifest["params"]
    assert record["epochs"] == distill["epochs"] + 1  # as long as distill and the fine-tune (prune.finetune_epochs 1)
    assert len(record["history"]) == record["epochs"] and all(row["kd"] > 0 for row in record["history"])
    pruned = metrics["steps"][-1]["after_finetune"]["validation_accuracy"]
    ships = (
        prune_alternatives.kept_run(record)["validation_accuracy"] > pruned
    )  # both within the budget: the more accurate, the pruned on a tie
    assert record["shipped"] is ships and metrics["shipped"] == ("alternative" if ships else "fine-tuned")
    model, spec = load_model(results["prune"].artifact.path)
    assert spec.name == ("resnet8_s2" if ships else "resnet8")
    assert (metrics["macs"], metrics["params"]) == count_macs_and_params(model, spec)
    assert "alternatives: resnet8_s2 x8 whole" in metrics["summary"]
    markdown = results["report"].artifact.file("report.md").read_text()
    auto = "(auto, the widest within the limit (900 ms, the budget less prune.search_margin), timed untrained: x8 "
    assert f"(prune.alternatives): resnet8_s2 x8 {auto}" in markdown
    assert "| the pruned model or another network trained whole (prune.alternatives) | validation |" in markdown


def test_a_more_accurate_alternative_ships_in_place_of_the_pruned_model_down_to_its_onnx_file(store, monkeypatch):
    """Its training is stubbed to a perfect validation score: what is asserted is what ships, and how it is said."""

    def perfect(model, spec, teacher, dataset, params, distill_params, out_dir, name):
        return {"epochs": 1, "validation_accuracy": 1.0, "test_accuracy": 0.5, "history": []}

    monkeypatch.setattr(prune_alternatives, "train_from_scratch", perfect)
    results = run_prune(store, *RESNET, "prune.target_latency_ms=999", target="report")
    metrics = results["prune"].artifact.metrics
    assert metrics["shipped"] == "alternative" and metrics["alternatives"][0]["shipped"]
    assert "without_teacher" not in metrics["alternatives"][0]  # distill.baseline false: not trained on labels alone
    assert (metrics["validation_accuracy"], metrics["test_accuracy"]) == (1.0, 0.5)
    model, spec = load_model(results["prune"].artifact.path)
    assert spec.name == "resnet8_s2" and model[0][0].stride == (2, 2)  # the stride-2 stem, no pruning replayed
    exported = results["export"].artifact.metrics["models"]["pruned"]
    assert (exported["macs"], exported["params"]) == (metrics["macs"], metrics["params"])
    # Twice the student's width on a quarter of its pixels after the stem: the variant's MACs, not the student's
    assert metrics["macs"] == metrics["alternatives"][0]["macs"] != metrics["macs_before"]
    assert "resnet8_s2 x8 whole" in metrics["summary"] and metrics["summary"].count(", ships") == 1
    # The search and the channels removed are said to be the pruned student's, and what ships comes last.
    assert metrics["summary"].startswith("the pruned student, not shipped: budget 999 ms met")
    assert metrics["summary"].endswith(", ships")
    markdown = results["report"].artifact.file("report.md").read_text()
    limit = "the limit (899.1 ms, the budget less prune.search_margin)"
    assert f"the most accurate on validation within {limit}, so it is the pruned model that ships" in markdown
    pruned_is = "Pruned: resnet8_s2 x8 trained whole from fresh weights with distillation (prune.alternatives), not"
    assert f"{pruned_is} the student pruned: more accurate on validation within {limit} (1.0000 against" in markdown
    html = results["report"].artifact.file("report.html").read_text()
    assert f"<p>{pruned_is}" in html
    assert "<h2>The pruned student against other networks trained whole</h2><p>At the budget of 999 ms" in html
    assert f"<tr><td>resnet8_s2 x8 (auto, the widest within {limit}, timed" in html and "<td>1.0000" in html
    assert "auto&#x27;s widest within the limit of 899.1 ms (the budget less prune.search_margin" in html
    assert html.count("<td><strong>yes</strong></td>") == 1 and "<td>the student pruned (fine-tuned)</td>" in html


def test_with_distill_baseline_each_alternative_is_also_trained_on_labels_alone_and_the_more_accurate_is_kept(
    store, monkeypatch
):
    """Training stubbed (labels alone scores 1.0, distilled 0.5, and marks its weights): what is asserted is how the
    second run is asked for, that the more accurate on validation is the model that ships, and how it is said."""
    calls = []

    def scored(model, spec, teacher, dataset, params, distill_params, out_dir, name):
        calls.append((name, teacher, distill_params, next(model.parameters()).detach().clone()))
        accuracy = 0.5 if teacher is not None else 1.0
        if teacher is None:
            next(model.parameters()).data.fill_(0.125)  # which of the two models ships is read from its weights
        history = [{"epoch": 1, "loss": 1.0, "train_accuracy": accuracy, "name": name}]
        return {"epochs": 3, "validation_accuracy": accuracy, "test_accuracy": accuracy / 2, "history": history}

    monkeypatch.setattr(prune_alternatives, "train_from_scratch", scored)
    sets = [*RESNET, "prune.target_latency_ms=996", "distill.baseline=true", "distill.feature_loss=attention"]
    results = run_prune(store, *sets, target="report")
    metrics = results["prune"].artifact.metrics
    (record,) = metrics["alternatives"]
    (distilled, labels) = calls
    assert distilled[0] == "alternative-0" and labels[0] == "alternative-0-labels" and labels[1] is None
    assert labels[2] == {**distilled[2], "alpha": 0.0, "feature_loss": "none"} and distilled[2]["alpha"] > 0
    assert labels[3].equal(distilled[3])  # the same fresh weights, so the runs differ only in what they learn from
    assert record["validation_accuracy"] == 0.5 and record["without_teacher"] == {
        "epochs": 3, "validation_accuracy": 1.0, "test_accuracy": 0.5, "history": [
            {"epoch": 1, "loss": 1.0, "train_accuracy": 1.0, "name": "alternative-0-labels"}]
    }  # fmt: skip
    assert record["kept"] == "labels alone" and record["shipped"] and metrics["shipped"] == "alternative"
    assert (metrics["validation_accuracy"], metrics["test_accuracy"]) == (1.0, 0.5)
    model, spec = load_model(results["prune"].artifact.path)
    assert spec.name == "resnet8_s2" and bool((next(model.parameters()) == 0.125).all())
    assert "resnet8_s2 x8 whole " in metrics["summary"]
    assert "0.5000 validation (1.0000 on labels alone, kept), ships" in metrics["summary"]
    markdown = results["report"].artifact.file("report.md").read_text()
    kept = "; on labels alone (no teacher, as many epochs) validation 1.0000 ["
    assert kept in markdown and "more accurate on validation, so this one is kept, the most accurate" in markdown
    assert "Pruned: resnet8_s2 x8 trained whole from fresh weights on labels alone (more accurate on" in markdown
    assert "| another network distilled or trained on labels alone (prune.alternatives, distill.baseline) |" in markdown
    html = results["report"].artifact.file("report.html").read_text()
    assert "<tr><td>resnet8_s2 x8 on labels alone (no teacher)</td>" in html
    assert html.count("<td><strong>yes</strong></td>") == 1 and "</td><td>no</td></tr><tr><td>resnet8_s2 x8 on" in html
    report = results["report"].artifact.file("report.json").read_text()
    assert '"alternative resnet8_s2 x8 without teacher": [' in report  # its training curve
    # A run that learns from labels alone already (alpha 0, no feature loss) is not trained twice.
    calls.clear()
    plain = run_prune(store, *sets[:-1], "distill.alpha=0").artifact.metrics["alternatives"][0]
    assert [call[0] for call in calls] == ["alternative-0"] and plain["without_teacher"]["validation_accuracy"] == 0.5
    assert plain["kept"] == "distilled"  # a tie keeps the distilled run


def test_an_alternative_over_the_budget_whole_is_measured_not_trained(store, monkeypatch):
    real, trained = prune_budget.achieved, []

    def slow_variant(model, spec, dataset, params, limit_ms=None):
        measured = real(model, spec, dataset, params, limit_ms)
        return {**measured, "latency_ms": 2 * params.target_latency_ms} if spec.name.endswith("_s2") else measured

    monkeypatch.setattr(prune_budget, "achieved", slow_variant)
    monkeypatch.setattr(prune_alternatives, "train_from_scratch", lambda *args: trained.append(args))
    metrics = run_prune(store, *RESNET, "prune.target_latency_ms=998").artifact.metrics
    (record,) = metrics["alternatives"]
    assert record["trained"] is False and record["untrained"]["latency_ms"] == 1996 and trained == []
    assert [entry["width"] for entry in record["widths"]] == [8, 6, 4, 3, 2]  # every width over: the narrowest
    assert metrics["shipped"] == "fine-tuned" and "resnet8_s2 x2 not trained (1996.0000 ms" in metrics["summary"]
    # Without a budget, or with prune.alternatives null, nothing else is built.
    assert run_prune(store, *RESNET).artifact.metrics["alternatives"] is None
    assert (
        run_prune(store, *RESNET, "prune.target_latency_ms=997", "prune.alternatives=null").artifact.metrics[
            "alternatives"
        ]
        is None
    )


def test_a_student_that_cannot_reach_the_budget_does_not_stop_a_run_whose_alternative_meets_it(
    tmp_path, monkeypatch, caplog
):
    """The floor check before training: the student (0.2 ms a round) cannot reach 0.1 ms, its stride-2 variant
    (0.05 ms) can; the run goes on to train (the teacher stage, stubbed to stop there) and says why."""
    from pipeline.cache import ArtifactStore
    from pipeline.errors import StageError
    from pipeline.runner import load_config, run_pipeline
    from pipeline.search import prune_candidates
    from stages import teacher

    class Trained(Exception):
        pass

    def p50(self, path):
        return (0.05 if self.spec.name.endswith("_s2") else 0.2), "fixed"

    def stop(*args):
        raise Trained

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    monkeypatch.setattr(teacher, "run", stop)
    budget = [*RESNET, "prune.search=uniform", "prune.search_repeats=2", "prune.target_latency_ms=0.1"]
    store = ArtifactStore(tmp_path / "artifacts")
    with caplog.at_level(logging.WARNING), pytest.raises(Trained):
        run_pipeline(load_config(overrides=budget), store, target="prune")
    assert (
        "floor check: resnet8 x4 cannot reach prune.target_latency_ms=0.1 pruned; prune.alternatives measured within "
        "it whole: resnet8_s2 x2 (0.0500 ms); the prune stage trains them" in caplog.text
    )
    with pytest.raises(StageError, match=r"^prune.target_latency_ms=0.1: resnet8 x4 -1 block cannot reach it"):
        run_pipeline(load_config(overrides=[*budget, "prune.alternatives=null"]), store, target="prune")


@pytest.mark.parametrize(
    ("alternatives", "advised"),
    [("auto", False), ("[resnet8_s2@4]", False), ("[resnet8_s2@8]", True), ("null", True)],
)
def test_the_run_advises_the_stride_2_variant_only_when_no_alternative_times_it_at_the_students_width(
    tmp_path, monkeypatch, alternatives, advised
):
    """The student (resnet8 x4) reaches the budget (floor check stubbed); auto times resnet8_s2 at 8, 6, 4, 3 and 2
    channels, so 4 among them: the prune stage trains what the advice would say, and it is not given."""
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline
    from pipeline.search import student_floor
    from stages import teacher

    class Trained(Exception):
        pass

    def stop(*args):
        raise Trained

    asked = []
    monkeypatch.setattr(student_floor, "floor_check", lambda *args: None)
    monkeypatch.setattr(student_floor, "variant_advice", lambda *args: asked.append(args))
    monkeypatch.setattr(teacher, "run", stop)
    budget = [*RESNET, "prune.target_latency_ms=0.1", f"prune.alternatives={alternatives}"]
    with pytest.raises(Trained):
        run_pipeline(load_config(overrides=budget), ArtifactStore(tmp_path / "artifacts"), target="prune")
    assert bool(asked) is advised


def test_a_timing_over_the_budget_is_taken_again_and_the_report_lists_every_round(store, monkeypatch):
    """A host's slow episode stood in for: each exported file's first timing is 5000 ms, its later ones 1 ms. Every
    model measured against the budget is timed again and trained or shipped on its fast round (retime.py)."""
    from pipeline.search import prune_candidates

    timed = set()

    def p50(self, path):
        first = path not in timed
        timed.add(path)
        return (5000.0 if first else 1.0), "fixed"

    def perfect(model, spec, teacher, dataset, params, distill_params, out_dir, name):
        return {"epochs": 1, "validation_accuracy": 1.0, "test_accuracy": 0.5, "history": []}

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    monkeypatch.setattr(prune_alternatives, "train_from_scratch", perfect)
    results = run_prune(store, *RESNET, "prune.target_latency_ms=996", "prune.drop_blocks=0", target="report")
    metrics = results["prune"].artifact.metrics
    (record,) = metrics["alternatives"]
    # Held to the search's limit, not the budget: every network that may ship (run_prune: prune.retime_gap_s=0, the
    # default 4 rounds)
    held_to_limit = {"rounds_ms": [5000.0, 1.0], "gap_s": 0.0, "limit_ms": pytest.approx(996 * 0.9)}
    assert record["widths"] == [{"width": 8, "latency_ms": 1.0, "timed_again": held_to_limit}] and record["trained"]
    assert record["achieved"]["latency_ms"] == 1.0 and record["achieved"]["timed_again"] == held_to_limit
    assert metrics["latency_search"]["achieved"]["timed_again"] == held_to_limit  # the pruned student, fine-tuned
    assert metrics["shipped"] == "alternative"
    report = results["report"].artifact
    listed = json.loads(report.file("report.json").read_text())["pruning"]["timed_again"]
    assert [entry["what"] for entry in listed] == [
        "the pruned model after its fine-tune",
        "resnet8_s2 x8 untrained",
        "resnet8_s2 x8 trained",
    ]
    said = "resnet8_s2 x8 untrained 5000.0000, then 1.0000 ms, 0 s apart (1.0000 decided)"
    assert "- Timed again while over the budget of 996 ms (a search's" in report.file("report.md").read_text()
    assert said in report.file("report.md").read_text()
    assert (
        "<h2>Timed again while over the budget</h2><p>Timed again while over the budget of 996 ms"
        in report.file("report.html").read_text()
    )


def test_with_a_speedup_budget_the_alternatives_meet_the_teacher_timed_again_before_them(store, monkeypatch):
    from pipeline.search import teacher_budget

    # The teacher's first timing gives the search a budget the student meets unpruned (500 ms); timed again before
    # the alternatives it gives one nothing meets (a microsecond), so the stride-2 variant is timed, not trained.
    timings, asked = iter([0.5, 1e-6]), []

    def of_artifact(teacher_dir, dataset, prune):
        asked.append((prune.target_threads, prune.retime_rounds))
        fastest_ms = next(timings)
        runs = {"fastest_ms": fastest_ms, "p50_ms": fastest_ms, "runs_ms": [fastest_ms], "settings": "1 thread"}
        return {**runs, "speedup": prune.target_speedup_vs_teacher, "budget_ms": fastest_ms / 0.001}

    monkeypatch.setattr(teacher_budget, "of_artifact", of_artifact)
    probe_timing(monkeypatch, [0.04, 0.08])  # candidates at one thread, but not the teacher
    sets = [*RESNET, "prune.target_speedup_vs_teacher=0.001", "prune.drop_blocks=0", "prune.thread_probe_s=1"]
    results = run_prune(store, *sets, target="report")
    metrics = results["prune"].artifact.metrics
    # The teacher both times at its own settings, as the bench times it; the candidates at one thread.
    assert asked == [(None, 4), (None, 4)] or environment.cores() < 2
    assert metrics["latency_search"]["method"]["settings"] == "1 thread" or environment.cores() < 2
    from_teacher, (record,) = metrics["budget_from_teacher"], metrics["alternatives"]
    assert metrics["latency_search"]["budget_ms"] == from_teacher["budget_ms"] == 500 and metrics["ratio"] == 0.0
    assert from_teacher["before_alternatives"] == {
        "runs_ms": [1e-6],
        "settings": "1 thread",
        "fastest_ms": 1e-6,
        "budget_ms": pytest.approx(1e-3),
    }
    assert record["budget_ms"] == pytest.approx(1e-3) and record["limit_ms"] == pytest.approx(0.9e-3)
    assert record["trained"] is False and metrics["shipped"] == "fine-tuned"
    assert "0.001 ms before the alternatives (the teacher timed again); " in metrics["summary"]
    markdown = results["report"].artifact.file("report.md").read_text()
    assert "Timed again before the alternatives were decided (0.0000 ms at 1 thread): the fastest of all its " in (
        markdown
    )
    assert "gave the budget they and the shipping decision met, 0.001 ms." in markdown
    assert "untrained, over the budget (0.001 ms): not trained" in markdown
