import dataclasses
import json

import numpy as np
import pytest

from pipeline.reporting.gates import choose_edge_model, edge_reason, signoff_gates
from pipeline.reporting.intervals import accuracy_with_interval
from pipeline.reporting.steps_section import scratch_epochs_text
from stages.bench import PROVIDER
from stages.report import Params

IMAGES = 1000


def scores(split: str, accuracy: float, images: int = IMAGES, first: int = 0) -> dict:
    """A split's accuracy fields with per-image correctness: `accuracy` of `images`, right from image `first` on
    (models right on overlapping runs of images disagree on few of them: a paired comparison is precise)."""
    correct = np.zeros(images, dtype=bool)
    correct[np.arange(first, first + round(accuracy * images)) % images] = True
    record = accuracy_with_interval(correct)
    prefix = "" if split == "test" else "validation_"
    return {
        f"{prefix}accuracy" if split == "validation" else "accuracy": record["accuracy"],
        f"{prefix}interval" if split == "validation" else "accuracy_interval": record["interval"],
        f"{split}_correct": record["correct"],
        f"{split}_images": images,
    }


def model(name, accuracy, p50, size=1000, validation=None, test_first=0):
    """A measured model; its validation accuracy is `accuracy` unless given."""
    return {
        "name": name,
        **scores("test", accuracy, first=test_first),
        **scores("validation", accuracy if validation is None else validation),
        "size_bytes": size,
        "latency": {PROVIDER: {"1": {"p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "runs": 100}}},
    }


MODELS = [
    model("teacher", 0.99, 1.0),
    model("student", 0.98, 0.3),
    model("pruned", 0.97, 0.2),
    model("int8", 0.90, 0.1),
]


def test_edge_model_is_the_fastest_that_passes_the_accuracy_gates():
    edge, passing, _ = choose_edge_model(MODELS, Params(max_drop_vs_teacher=0.03, max_drop_vs_student=0.02))
    assert edge["name"] == "pruned"  # int8 is faster but loses 8 points
    assert passing == ["teacher", "student", "pruned"]


def test_a_slower_model_within_the_latency_tie_wins_only_if_more_accurate_beyond_the_noise():
    # student is 1 point more accurate than pruned on 1000 validation images, on overlapping images: beyond the noise.
    models = [model("teacher", 0.99, 1.0), model("student", 0.98, 0.105), model("pruned", 0.97, 0.1)]
    assert choose_edge_model(models, Params(latency_tie=0.1))[0]["name"] == "student"
    assert choose_edge_model(models, Params(latency_tie=0.0))[0]["name"] == "pruned"
    # 0.2 points on disagreeing images is inside the noise: the faster model wins even within the tie.
    noisy = [model("teacher", 0.99, 1.0), model("student", 0.972, 0.105, validation=0.972), model("pruned", 0.97, 0.1)]
    noisy[1] |= scores("validation", 0.972, first=500)  # right on other images than pruned: many disagreements
    edge, _, tied = choose_edge_model(noisy, Params(latency_tie=0.1))
    assert edge["name"] == "pruned" and tied == ["pruned", "student"]


def test_the_choice_reads_validation_accuracies_only():
    # The same validation results with other test results choose the same model; another validation ranking does not.
    shuffled = [model(m["name"], m["accuracy"], m["latency"][PROVIDER]["1"]["p50_ms"], test_first=7) for m in MODELS]
    for m, original in zip(shuffled, MODELS, strict=True):
        m |= {k: original[k] for k in original if k.startswith("validation")}
        m["accuracy"] = 1.0 - original["accuracy"]  # test accuracies upside down
    params = Params(max_drop_vs_teacher=0.03, max_drop_vs_student=0.02)
    assert choose_edge_model(shuffled, params)[0]["name"] == choose_edge_model(MODELS, params)[0]["name"] == "pruned"
    worse_on_validation = [*MODELS[:2], model("pruned", 0.97, 0.2, validation=0.90), MODELS[3]]
    assert choose_edge_model(worse_on_validation, params)[0]["name"] == "student"


def test_int8_is_not_assumed_faster():
    models = MODELS[:3] + [model("int8", 0.97, 0.25)]
    assert choose_edge_model(models, Params())[0]["name"] == "pruned"


def test_no_model_passing_names_the_most_accurate_and_fails():
    edge, passing, _ = choose_edge_model(MODELS, Params(min_accuracy=0.995))
    assert edge["name"] == "teacher" and passing == []


def test_accuracy_gates_say_what_they_compare_and_bounds_are_stricter():
    edge = MODELS[2]
    point = {g["name"]: g for g in signoff_gates(edge, MODELS, Params(min_accuracy=0.965))}
    bound = {g["name"]: g for g in signoff_gates(edge, MODELS, Params(min_accuracy=0.965, accuracy_basis="bound"))}
    assert point["min_accuracy"]["compares"] == "point estimate" and point["min_accuracy"]["split"] == "test"
    assert bound["min_accuracy"]["compares"] == "95% bound"
    assert point["min_accuracy"]["passed"] and not bound["min_accuracy"]["passed"]  # 0.97, lower bound ~0.957
    assert bound["max_drop_vs_teacher"]["value"] > point["max_drop_vs_teacher"]["value"] == pytest.approx(0.02)


def test_optional_gates_are_evaluated_only_when_set():
    edge = MODELS[2]
    assert [g["name"] for g in signoff_gates(edge, MODELS, Params())] == [
        "min_accuracy",
        "max_drop_vs_teacher",
        "max_drop_vs_student",
    ]
    gates = signoff_gates(edge, MODELS, Params(max_latency_ms=0.2, min_speedup_vs_teacher=4.0, max_size_bytes=999))
    verdicts = {g["name"]: (g["value"], g["passed"]) for g in gates}
    assert verdicts["max_latency_ms_p90_batch_1"][1] is False  # p90 0.24 > 0.2
    assert verdicts["min_speedup_vs_teacher_batch_1"] == (5.0, True)
    assert verdicts["max_size_bytes"] == (1000, False)


def test_report_files_follow_the_schema(tiny_run):
    store, results = tiny_run
    artifact = results["report"].artifact
    report = json.loads(artifact.file("report.json").read_text())
    assert set(report) >= {"config", "environment", "models", "edge_model", "signoff"}
    assert set(report["environment"]) >= {"cpu", "cores", "torch", "onnx", "onnxruntime", "providers"}
    assert set(report["machine"]) >= {"cpu", "cpu_flags_sha256", "cores", "onnxruntime", "onnxruntime_build"}
    assert report["config"]["prune"]["ratio"] == 0.5 and report["config"]["signoff"]["min_accuracy"] == 0.8
    for entry in report["models"]:
        assert (store.root / entry["path"]).is_file()
        assert set(entry) >= {"name", "path", "sha256", "params", "macs", "size_bytes", "accuracy", "latency"}
    edge = next(m for m in report["models"] if m["name"] == report["edge_model"])
    assert artifact.manifest["files"]["model.onnx"] == edge["sha256"]
    markdown = artifact.file("report.md").read_text()
    assert f"Edge model: **{report['edge_model']}**" in markdown
    assert "| min_accuracy | 0.8 |" in markdown
    assert report["teacher_origin"]["summary"].startswith("cnn x16 fresh weights, trained 8 epoch(s)")
    assert f"Teacher: {report['teacher_origin']['summary']}." in markdown
    # TINY: distill 8 epochs, fine-tune 4, the scratch baseline's default 12: each said beside the other.
    assert "after the 4-epoch distillation fine-tune" in markdown
    assert "from scratch with distillation for 12 epochs (as many as distill's 8 and the fine-tune's 4 together)" in (
        markdown
    )


def test_the_scratch_baselines_epochs_say_what_they_were_set_against():
    assert (
        scratch_epochs_text(25, 10, 15, None) == "25 epochs (as many as distill's 10 and the fine-tune's 15 together)"
    )
    assert scratch_epochs_text(15, 10, 15, 15) == "15 epochs (prune.scratch_epochs; distill 10, the fine-tune 15)"


def test_reproduce_command_lists_every_non_default_value(tiny_run):
    _, results = tiny_run
    report = json.loads(results["report"].artifact.file("report.json").read_text())
    command = report["reproduce"]
    # sections in stage order, each one's keys sorted (as manifests store them, fresh or cached)
    assert command.startswith("edgeforge run --set teacher.device=cpu --set teacher.epochs=8 --set teacher.width=16")
    assert "--set 'bench.batch_sizes=[1,8]'" in command
    assert "--set prune.ratio=0.5" in command  # not the default 0.25
    assert "prune.importance" not in command and "export.opset" not in command  # defaults


def test_latency_limits_gate_any_percentile_provider_and_batch():
    import pytest

    from pipeline.errors import ConfigError

    edge = MODELS[2]  # pruned: p50 0.2, p99 0.3 at batch 1 on CPU
    gates = signoff_gates(edge, MODELS, Params(latency_limits=("cpu:1:p99<=0.35", "cpu:1:p50<=0.1", "cuda:1:p90<=1")))
    verdicts = {g["name"]: (g["value"], g["passed"]) for g in gates[3:]}
    assert verdicts == {
        "max_latency_ms_p99_cpu_batch_1": (pytest.approx(0.3), True),
        "max_latency_ms_p50_cpu_batch_1": (0.2, False),
        "max_latency_ms_p90_cuda_batch_1": (None, False),  # not measured: cannot pass
    }
    with pytest.raises(ConfigError, match=r"entry 'cpu:1:p97<=1' is not allowed: expected PROVIDER:BATCH:PERCENTILE"):
        Params(latency_limits=("cpu:1:p97<=1",))


def test_edge_model_is_chosen_on_the_latency_provider():
    from pipeline.reporting.budget_gate import with_budget_gate

    cuda = "CUDAExecutionProvider"
    models = [model("teacher", 0.99, 1.0), model("student", 0.985, 0.3), model("student_int8", 0.98, 0.2)]
    models[1]["latency"][cuda] = {"1": {"p50_ms": 0.05, "p90_ms": 0.06, "p99_ms": 0.07}}  # fast on GPU
    models[2]["latency"][cuda] = {"1": {"p50_ms": 0.09, "p90_ms": 0.10, "p99_ms": 0.11}}
    models[0]["latency"][cuda] = {"1": {"p50_ms": 0.50, "p90_ms": 0.60, "p99_ms": 0.70}}
    assert choose_edge_model(models, Params(latency_tie=0))[0]["name"] == "student_int8"
    assert choose_edge_model(models, Params(latency_tie=0, latency_provider="cuda"))[0]["name"] == "student"
    budget = {"target_latency_ms": 0.15, "target_batch": 1, "target_provider": "cpu"}
    params = with_budget_gate(Params(latency_tie=0), budget, None)
    assert params.latency_limits == ("cpu:1:p50<=0.15",)
    assert with_budget_gate(params, budget, None) == params  # a report re-checked from its own config adds nothing
    gates = {g["name"]: g for g in signoff_gates(models[2], models, params)}
    assert gates["max_latency_ms_p50_cpu_batch_1"]["passed"] is False  # 0.2 ms > 0.15 ms
    assert with_budget_gate(Params(), {"target_latency_ms": None}, None) == Params()


def test_a_speedup_budget_is_gated_against_the_teacher_timed_in_the_same_bench():
    from pipeline.reporting.budget_gate import in_this_bench, with_budget_gate

    models = [model("teacher", 0.99, 0.5), model("student", 0.985, 0.3), model("student_int8", 0.98, 0.11)]
    prune = {"target_latency_ms": None, "target_speedup_vs_teacher": 5.0, "target_batch": 1, "target_provider": "cpu"}
    # The prune stage timed the teacher at 0.4 ms (budget 0.08 ms); in the bench the machine ran 1.25x slower.
    timed = {"p50_ms": 0.4, "runs_ms": [0.4], "settings": "1 thread", "speedup": 5.0, "budget_ms": 0.08}
    from_teacher = in_this_bench(timed, prune, models)
    assert from_teacher == {**timed, "bench_p50_ms": 0.5, "gate_ms": 0.1}
    params = with_budget_gate(Params(latency_tie=0), prune, from_teacher)
    assert params.latency_limits == ("cpu:1:p50<=0.1",)
    # 0.11 ms is 4.5x the teacher of this bench: over the budget, whatever the prune stage's clock said.
    gates = {g["name"]: g for g in signoff_gates(models[2], models, params)}
    assert gates["max_latency_ms_p50_cpu_batch_1"]["limit"] == 0.1
    assert gates["max_latency_ms_p50_cpu_batch_1"]["passed"] is False
    assert in_this_bench(None, prune, models) is None


def test_budget_must_be_where_the_edge_model_is_chosen():
    import pytest

    from pipeline.errors import ConfigError
    from pipeline.runner import load_config

    with pytest.raises(ConfigError, match=r"prune.target_batch=32 and prune.target_provider='cpu' must be where"):
        load_config(overrides=["prune.target_latency_ms=0.1", "prune.target_batch=32"])
    batch_32 = ["signoff.latency_batch=32", "bench.settings_batch=32"]
    load_config(overrides=["prune.target_latency_ms=0.1", "prune.target_batch=32", *batch_32])
    with pytest.raises(ConfigError, match=r"bench.settings_batch=1 must be where models are compared: set it to sig"):
        load_config(overrides=["signoff.latency_batch=32"])


def test_within_the_latency_limits_the_more_accurate_model_beyond_the_noise_ships():
    # "Under 0.35 ms, as accurate as possible": student (0.3 ms) is 1 point more accurate than pruned (0.1 ms)
    # beyond the noise, and both are under the limit.
    models = [model("teacher", 0.99, 1.0), model("student", 0.98, 0.3), model("pruned", 0.97, 0.1)]
    budget = Params(latency_limits=("cpu:1:p50<=0.35",))
    edge, _, tied = choose_edge_model(models, budget)
    assert edge["name"] == "student" and tied == ["pruned", "student"]
    assert "within every latency limit of the sign-off" in edge_reason(edge, ["student", "pruned"], tied, budget)
    # Speed alone when told so, or when the accurate model is over the limit (0.3 ms > 0.25 ms, or its p90 of 0.36 ms
    # over max_latency_ms).
    assert (
        choose_edge_model(models, Params(latency_limits=("cpu:1:p50<=0.35",), accurate_within_limits=False))[0]["name"]
        == "pruned"
    )
    assert choose_edge_model(models, Params(latency_limits=("cpu:1:p50<=0.25",)))[0]["name"] == "pruned"
    assert choose_edge_model(models, Params(max_latency_ms=0.35))[0]["name"] == "pruned"
    assert choose_edge_model(models, Params(max_latency_ms=0.4))[0]["name"] == "student"
    # No model within the limit: the fastest passing one is named as the fastest, not as within the limit.
    over = Params(latency_limits=("cpu:1:p50<=0.05",))
    edge, passing, tied = choose_edge_model(models, over)
    assert edge["name"] == "pruned" and tied == ["pruned"]
    assert "; of the fastest and those within every latency limit of the sign-off (pruned)," in edge_reason(
        edge, passing, tied, over
    )
    # Inside the noise, speed still wins within the limits.
    noisy = [model("teacher", 0.99, 1.0), model("student", 0.972, 0.3), model("pruned", 0.97, 0.1)]
    noisy[1] |= scores("validation", 0.972, first=500)
    assert choose_edge_model(noisy, budget)[0]["name"] == "pruned"


def test_a_report_made_before_the_limits_rule_is_rechecked_with_speed_alone():
    import dataclasses

    from pipeline.reporting.recheck import recheck_signoff
    from tests.pipeline.reporting.test_html import synthetic_report

    old = synthetic_report(max_latency_ms=1.0, accurate_within_limits=False)
    del old["config"]["signoff"]["accurate_within_limits"]  # as a report of VERSION 15 stored it
    assert old["edge_model"] == "pruned"
    result = recheck_signoff(old, Params)
    assert result["edge_model"] == "pruned" and result["mismatches"] == []
    new = synthetic_report(max_latency_ms=1.0)
    assert new["edge_model"] == "student" and dataclasses.asdict(Params())["accurate_within_limits"] is True
    assert recheck_signoff(new, Params)["mismatches"] == []


def test_a_failed_signoff_shows_what_each_model_lacks_and_names_the_closest():
    from pipeline.reporting.gates import gates_each_model_fails
    from pipeline.reporting.signoff_section import failing_lines, nearest_text

    # The CIFAR-10 case: the pruned model meets the budget but loses more than max_drop_vs_student; the student
    # passes the accuracy gates and misses the budget. Whichever ships, the sign-off fails: say what each lacks.
    params = Params(max_drop_vs_student=0.005, latency_limits=("cpu:1:p50<=0.25",))
    edge, passing, _ = choose_edge_model(MODELS, params)
    gates = signoff_gates(edge, MODELS, params)
    assert edge["name"] == "student" and not all(g["passed"] for g in gates)
    failing = gates_each_model_fails(MODELS, params)
    assert [g["name"] for g in failing["student"]] == ["max_latency_ms_p50_cpu_batch_1"]
    assert [g["name"] for g in failing["pruned"]] == ["max_drop_vs_student"]
    report = {"models": MODELS, "signoff": {"passed": False, "gates": gates, "failed_by_model": failing}}
    lines = failing_lines(report)
    assert lines[1] == "### Every model against the gates"
    assert lines[6:] == [  # fewest failed first, then nearest; without a speed-up gate the teacher misses one gate
        "|---|---|---|---|",
        "| student | 0.9800 | 0.9800 | max_latency_ms_p50_cpu_batch_1 0.3 against 0.25 |",
        "| pruned | 0.9700 | 0.9700 | max_drop_vs_student 0.01 against 0.005 |",
        "| teacher | 0.9900 | 0.9900 | max_latency_ms_p50_cpu_batch_1 1 against 0.25 |",
        "| int8 | 0.9000 | 0.9000 | max_drop_vs_teacher 0.09 against 0.03; max_drop_vs_student 0.08 against 0.005 |",
    ]
    # The error line: of those failing one gate, the nearest to its limit first (0.3 against 0.25 is 1.2x past it,
    # 0.01 against 0.005 2x, 1 against 0.25 4x); int8 fails two.
    assert nearest_text(report) == (
        "student (max_latency_ms_p50_cpu_batch_1 0.3 against 0.25); pruned (max_drop_vs_student 0.01 against 0.005); "
        "teacher (max_latency_ms_p50_cpu_batch_1 1 against 0.25)"
    )
    # At most three named; a model whose timing moved within the bench says by how much.
    one_gate = {name: failing["student"] for name in ("teacher", "student", "pruned", "int8")}
    moved = [{"name": "int8", "search_ms": 0.2, "rounds_ms": 0.28, "change": 0.4}]
    crowded = {**report, "signoff": {**report["signoff"], "failed_by_model": one_gate}, "timing_moved": moved}
    assert nearest_text(crowded) == (
        "teacher (max_latency_ms_p50_cpu_batch_1 0.3 against 0.25); student (max_latency_ms_p50_cpu_batch_1 0.3 "
        "against 0.25); pruned (max_latency_ms_p50_cpu_batch_1 0.3 against 0.25); 1 more"
    )
    moved[0]["name"] = "teacher"
    assert nearest_text(crowded).startswith(
        "teacher (max_latency_ms_p50_cpu_batch_1 0.3 against 0.25; its rounds timed +40% against its settings search)"
    )
    moved[0]["name"] = "pruned"  # its gate is not a latency gate: the move is not said
    assert "+40%" not in nearest_text({**report, "timing_moved": moved})
    passed = {**report, "signoff": {**report["signoff"], "passed": True}}
    assert failing_lines(passed) == [] and nearest_text(passed) == ""


@pytest.mark.parametrize(
    "prune, speedup, hinted",
    [
        ({}, 5.0, True),  # no budget searched for, the speed-up gate failed: a fifth of the teacher's p50
        ({"target_latency_ms": 0.5}, 5.0, False),  # a budget was searched for: the gate and the budget disagree
        ({"target_speedup_vs_teacher": 5.0}, 5.0, False),  # ... as a speed-up over the teacher
        ({"target_batch": 64}, 5.0, False),  # the prune stage times another batch than the gate's
        ({"target_device": "ssh://board"}, 5.0, False),  # ... or another device
        ({}, 1.5, False),  # the speed-up gate passed (the student is 3.3x the teacher)
    ],
)
def test_a_failed_speedup_gate_without_a_budget_names_the_budget_to_search_for(prune, speedup, hinted):
    from pipeline.reporting.gates import gates_each_model_fails
    from pipeline.reporting.signoff_section import budget_hint, failing_lines

    # The pruned model (0.2 ms, 5x the 1 ms teacher) loses too much accuracy, so the student ships at 3.3x and the
    # speed-up gate fails.
    params = Params(max_drop_vs_student=0.005, min_speedup_vs_teacher=speedup)
    edge, _, _ = choose_edge_model(MODELS, params)
    gates = signoff_gates(edge, MODELS, params)
    prune = {"target_latency_ms": None, "target_batch": 1, "target_provider": "cpu", "target_device": "local", **prune}
    report = {
        "config": {"prune": prune, "signoff": dataclasses.asdict(params)},
        "latency_target": {"name": "local"},
        "models": MODELS,
        "signoff": {"passed": False, "gates": gates, "failed_by_model": gates_each_model_fails(MODELS, params)},
    }
    expected = (
        "no latency budget was searched for: --set prune.target_speedup_vs_teacher=5 has the prune stage time the "
        "teacher and search for a model that fast (here 0.2 ms, the teacher's fastest timing in this bench / 5; "
        "prune.target_latency_ms sets it in ms)"
    )
    assert edge["name"] == "student"
    assert budget_hint(report) == (expected if hinted else "")
    assert (failing_lines(report)[-1] == expected) is hinted
