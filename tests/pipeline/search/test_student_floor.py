"""`edgeforge floor`: the student's latency unpruned and at its floor, measured before anything trains.

The candidates are built, pruned and exported for real; their "latency" is the ONNX file's size (Candidates.p50
patched), so what is asserted is the plumbing and the verdict, never this machine's timings.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.runner import load_config
from pipeline.search import prune_candidates, student_floor

FP32 = ("prune.target_format=fp32",)  # one form per candidate: half the exports


@pytest.fixture
def sized(monkeypatch):
    """Every candidate 'measures' its ONNX file's size in MB, and each call is logged (path, size)."""
    calls = []

    def p50(self, path):
        calls.append((self.spec.name, path.stat().st_size))
        return path.stat().st_size / 1e6, "size"

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    return calls


def sections(*overrides):
    config = load_config(overrides=(*FP32, *overrides))
    return config.section("teacher"), config.section("distill"), config.section("prune")


def test_model_names_take_an_optional_width_and_bad_ones_are_one_line():
    assert student_floor.parse_model("resnet8_s2@8") == ("resnet8_s2", 8)
    assert student_floor.parse_model("resnet8") == ("resnet8", 16)  # the published width
    for text, expected in (("resnet8@0", "NAME@WIDTH"), ("resnet8@x", "NAME@WIDTH"), ("nosuch", "not a known")):
        with pytest.raises(ConfigError, match=expected):
            student_floor.parse_model(text)


def test_the_alternatives_at_each_width_and_the_teacher_are_measured_beside_the_student():
    # auto's widths (2x to 0.5x the student's 16, multiples of 8): the widths the prune stage may time, widest first.
    roles = student_floor.students(*sections("distill.model=resnet8", "prune.round_to=8")[:3], ())
    assert [(role, model, width) for role, model, width in roles] == [
        ("student", "resnet8", 16),
        *[("alternative", "resnet8_s2", width) for width in (32, 24, 16, 8)],
        ("teacher", "cnn", 32),
    ]
    named = student_floor.students(*sections("distill.model=resnet8", "prune.alternatives=[resnet14_s2@8]")[:3], ())
    assert [(role, model, width) for role, model, width in named][1] == ("alternative", "resnet14_s2", 8)
    # Without alternatives, the stride-2 variant at the student's width; a --model replaces them.
    bare = student_floor.students(*sections("distill.model=resnet8", "prune.alternatives=null")[:3], ())
    assert [(role, model, width) for role, model, width in bare][1] == ("stride-2 variant", "resnet8_s2", 16)
    asked = student_floor.students(*sections("distill.model=resnet8")[:3], ("mlp@64",))
    assert [(role, model, width) for role, model, width in asked] == [
        ("student", "resnet8", 16),
        ("asked", "mlp", 64),
        ("teacher", "cnn", 32),
    ]
    assert [role for role, _, _ in student_floor.students(*sections()[:3], ())] == ["student", "teacher"]


def digits(tmp_path):
    """The digits data stage's dataset: all a floor needs (the models are untrained)."""
    from pipeline.cache import ArtifactStore
    from pipeline.datasets.artifact import load_dataset
    from pipeline.runner import run_pipeline

    data = run_pipeline(load_config(), ArtifactStore(tmp_path / "artifacts"), target="data")[-1]
    return load_dataset(data.artifact)


@pytest.mark.slow  # three models exported, quantized and timed twice each
def test_each_model_is_measured_unpruned_and_at_its_floor_in_interleaved_rounds(tmp_path, sized):
    dataset = digits(tmp_path)
    teacher, distill, prune = sections("prune.search_repeats=2", "prune.target_latency_ms=1")
    result = student_floor.measure(dataset, student_floor.students(teacher, distill, prune, ("mlp@32",)), prune)
    assert [row["model"] for row in result["rows"]] == ["cnn x8", "mlp x32", "cnn x32"]
    # Round by round, every model and form once: three models, two forms, two rounds.
    assert [name for name, _ in sized] == ["cnn", "cnn", "mlp", "mlp", "cnn", "cnn"] * 2
    for row in result["rows"]:
        assert len(row["runs"]["unpruned"]) == len(row["runs"]["floor"]) == 2
        assert 0.5 < row["floor_removed"] < 1
        assert row["floor_ms"] < row["unpruned_ms"] and row["floor_macs"] < row["unpruned_macs"]
    assert result["method"]["weights"] == "untrained" and result["method"]["rounds"] == 2
    assert result["verdict"]["reachable"] and "meets it unpruned" in result["verdict"]["message"]


def rows(student_ms, floor_ms, other_floor_ms, fastest_ms=None):
    def row(role, name, unpruned, floor, macs, fastest=None):
        return {"role": role, "name": name, "model": f"{name} x16", "unpruned_ms": unpruned, "floor_ms": floor,
                "floor_fastest_ms": floor if fastest is None else fastest, "floor_removed": 0.75,
                "fastest_ms": min(unpruned, floor if fastest is None else fastest), "unpruned_macs": macs,
                "droppable": 1 if name == "resnet8" else 0}  # fmt: skip

    return [
        row("student", "resnet8", student_ms, floor_ms, 12, fastest_ms),
        row("stride-2 variant", "resnet8_s2", other_floor_ms * 2, other_floor_ms, 3),
        row("teacher", "resnet20", 0.5, 0.01, 41),  # the teacher is never offered as a faster student
    ]


def test_the_verdict_applies_the_search_margin_and_names_the_students_that_reach_the_budget():
    unpruned = student_floor.verdict(rows(0.09, 0.05, 0.03), budget_ms=0.1, margin=0.1)
    assert unpruned["reachable"] and unpruned["message"].endswith(
        "meets it unpruned (0.0900 ms): a larger student may fit"
    )
    roomy = student_floor.verdict(rows(0.09, 0.05, 0.03), budget_ms=1, margin=0.1)  # the teacher fits, s2 is smaller
    assert roomy["message"].endswith("may fit; the teacher itself meets it (0.5000 ms)")  # not among the students
    wide = rows(0.09, 0.05, 0.03) + [{**rows(0.09, 0.05, 0.03)[1], "model": "resnet8_s2 x32", "unpruned_macs": 20}]
    assert student_floor.verdict(wide, budget_ms=1, margin=0.1)["message"].endswith(
        "; these larger ones meet it unpruned: resnet8_s2 x32 (0.0600 ms); the teacher itself meets it (0.5000 ms)"
    )
    by_pruning = student_floor.verdict(rows(0.095, 0.05, 0.03), budget_ms=0.1, margin=0.1)  # 0.095 > 0.09
    assert by_pruning["reachable"] and "reaches it by pruning: its floor measured 0.0500 ms" in by_pruning["message"]
    out = student_floor.verdict(rows(0.2, 0.095, 0.03), budget_ms=0.1, margin=0.1)
    assert not out["reachable"] and out["faster"] == ["resnet8_s2 x16"]
    assert "resnet8 x16 cannot reach it: its floor measured 0.0950 ms (0.0950 in its fastest round)" in out["message"]
    assert "resnet8_s2 runs every layer" in out["message"] and "\n" not in out["message"]
    assert "or remove whole residual blocks (prune.drop_blocks, 1 more can go)" in out["message"]
    assert out["message"].endswith("; these reach it: resnet8_s2 x16 (floor 0.0300 ms, 0.0300 fastest)")
    none = student_floor.verdict(rows(0.2, 0.095, 0.095), budget_ms=0.1, margin=0.1)
    assert none["faster"] == [] and "these reach it" not in none["message"]


def test_the_verdict_names_the_widest_alternative_within_the_limit_as_the_prune_stage_trains_it():
    student, variant, teacher = rows(0.2, 0.15, 0.03)

    def alternative(width, ms):
        timed = {"unpruned_ms": ms, "floor_ms": ms / 2, "fastest_ms": ms / 2, "runs": {"unpruned": [ms], "floor": [ms]}}
        return {**variant, **timed, "role": "alternative", "model": f"resnet8_s2 x{width}"}

    widths = [alternative(32, 0.12), alternative(24, 0.095), alternative(16, 0.06)]
    said = student_floor.verdict([student, *widths, teacher], budget_ms=0.1, margin=0.1)
    assert said["trains"] == ["resnet8_s2 x16"]  # x24 is within the budget (0.1 ms), over the search's limit (0.09)
    assert student_floor.verdict([student, widths[0], teacher], budget_ms=0.1, margin=0.1)["trains"] == []
    # None within the limit: the narrowest, when within the budget
    assert student_floor.verdict([student, *widths[:2], teacher], budget_ms=0.1, margin=0.1)["trains"] == [
        "resnet8_s2 x24"
    ]
    formats = {"unpruned_format": "int8", "floor_format": "int8", "runs": {"unpruned": [0.2], "floor": [0.1]}}
    method = {"device": "local", "provider": "cpu", "batch": 1, "settings": "tuned", "rounds": 1}
    table = {"rows": [{**row, **formats} for row in (student, *widths)], "budget_ms": 0.1, "verdict": said}
    table["method"] = method
    assert (
        "would train (the widest within the search's limit, else the narrowest within the budget): resnet8_s2 x16\n"
        in student_floor.format_floors(table)
    )


def test_under_auto_the_verdict_speaks_of_the_shallowest_depth_that_reaches_the_budget():
    whole, other, teacher = rows(0.2, 0.15, 0.03)
    cut = {**whole, "model": "resnet8 x16 -1 block", "unpruned_ms": 0.08, "floor_ms": 0.06, "fastest_ms": 0.06}
    said = student_floor.verdict([whole, cut, other, teacher], budget_ms=0.1, margin=0.1)
    assert said["reachable"] and said["message"] == (
        "resnet8 x16 -1 block meets it unpruned (0.0800 ms), the whole student does not: prune.drop_blocks auto tries "
        "each depth"
    )
    pruned = {**whole, "floor_ms": 0.085, "fastest_ms": 0.085}  # the whole student reaches it by pruning: it speaks
    said = student_floor.verdict([pruned, cut, other, teacher], budget_ms=0.1, margin=0.1)
    assert said["message"].startswith("resnet8 x16 reaches it by pruning: its floor measured 0.0850 ms")
    over = {**cut, "unpruned_ms": 0.2, "floor_ms": 0.095, "fastest_ms": 0.095}  # neither: the deepest is named
    said = student_floor.verdict([whole, over, other, teacher], budget_ms=0.1, margin=0.1)
    assert not said["reachable"] and said["message"].startswith("resnet8 x16 -1 block cannot reach it: its floor")
    assert said["faster"] == ["resnet8_s2 x16"]


def test_a_student_faster_unpruned_than_at_its_floor_reaches_the_budget_unpruned():
    # Small models can run slower at their floor: on digits the cnn x8 measured 0.0154 ms there, 0.0145 unpruned.
    said = student_floor.verdict(rows(0.085, 0.095, 0.095), budget_ms=0.1, margin=0.1)
    assert said["reachable"] and "meets it unpruned (0.0850 ms)" in said["message"]


def test_a_floor_whose_fastest_round_meets_the_budget_is_not_failed_but_said_to_be_at_the_edge():
    # This VM drifts by up to 1.4x over seconds: a median over the limit is not proof that the floor is.
    edge = student_floor.verdict(rows(0.2, 0.095, 0.095, fastest_ms=0.085), budget_ms=0.1, margin=0.1)
    assert edge["reachable"]
    assert "resnet8 x16 reaches it only in its fastest rounds: its floor measured 0.0950 ms (0.0850" in edge["message"]


def test_the_command_exits_1_in_one_line_when_the_floor_is_over_the_budget(tmp_path, sized):
    def floor(*sets):
        args = [arg for item in (*FP32, "prune.search_repeats=1", *sets) for arg in ("--set", item)]
        return CliRunner().invoke(cli, ["--artifacts", str(tmp_path), "floor", *args])

    out = floor("prune.target_latency_ms=0.000001")  # MB of ONNX file: no model is that small
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1].startswith("error: prune.target_latency_ms=1e-06: cnn x8 cannot reach")
    assert "student           cnn x8" in out.output and "out of reach" in out.output  # the table, then the line
    bad = floor("prune.target_latency_ms=1", "distill.model=nosuch")
    assert bad.exit_code == 2 and "distill.model='nosuch'" in bad.output


@pytest.mark.slow  # trains the FAST pipeline up to prune
def test_a_run_for_a_budget_under_the_students_floor_fails_before_training_unless_told_to_go_on(tmp_path, sized):
    from pipeline.cache import ArtifactStore
    from pipeline.errors import StageError
    from pipeline.runner import run_pipeline
    from tests.conftest import FAST

    store = ArtifactStore(tmp_path / "artifacts")
    uniform = ("prune.search=uniform", "prune.search_repeats=2", "prune.target_latency_ms=0.000001")
    config = load_config(overrides=(*FAST, *FP32, *uniform))
    with pytest.raises(
        StageError, match=r"cnn x8 cannot reach it: its floor \(\d+% of the channels removed, untrained\)"
    ):
        run_pipeline(config, store, target="prune")
    assert [name for name, _ in sized] == ["cnn"] * 4  # its floor in 2 rounds, missed, then unpruned in 2
    assert not (store.cache / "teacher").exists()  # nothing trained, only the data stage published
    assert [entry.name for entry in (store.cache / "data").iterdir() if not entry.name.startswith(".")]
    # Told to go on, the run trains and the prune stage handles the budget (it misses it, and says so).
    results = run_pipeline(config, store, target="prune", check_floor=False)
    assert results[-1].artifact.metrics["latency_search"]["met"] is False
    # With the student pruned there is nothing left to save: no check, and the cached run is reused.
    sized.clear()
    assert all(result.cached for result in run_pipeline(config, store, target="prune"))
    assert sized == []
    # Another budget for the distilled student: checked before the prune stage, which publishes nothing.
    pruned = sorted(entry.name for entry in (store.cache / "prune").iterdir() if not entry.name.startswith("."))
    other = load_config(overrides=(*FAST, *FP32, *uniform, "prune.target_latency_ms=0.000002"))
    with pytest.raises(StageError, match=r"cnn x8 cannot reach it: .* pass --skip-floor-check to prune it anyway$"):
        run_pipeline(other, store, target="prune")
    assert [name for name, _ in sized] == ["cnn"] * 4
    assert sorted(entry.name for entry in (store.cache / "prune").iterdir() if not entry.name.startswith(".")) == pruned


def test_with_drop_blocks_each_model_is_measured_without_its_first_droppable_blocks(tmp_path, sized):
    dataset = digits(tmp_path)
    _, _, prune = sections("distill.model=resnet14", "distill.width=4", "prune.drop_blocks=2")
    row, _, settings = student_floor.measured_student("asked", "resnet14", 4, dataset, prune)
    assert row["model"] == "resnet14 x4 -2 blocks" and row["dropped_blocks"] == ["1", "2"] and row["droppable"] == 2
    few, _, _ = student_floor.measured_student("asked", "resnet8_s2", 4, dataset, prune)  # it has one
    assert few["model"] == "resnet8_s2 x4 -1 block" and few["droppable"] == 0
    cnn, _, _ = student_floor.measured_student("asked", "cnn", 4, dataset, prune)
    assert cnn["model"] == "cnn x4" and cnn["dropped_blocks"] == []
    teacher, _, _ = student_floor.measured_student("teacher", "resnet14", 4, dataset, prune)  # the budget's reference
    assert teacher["model"] == "resnet14 x4" and teacher["dropped_blocks"] == [] and teacher["droppable"] == 4
    # auto may remove every block: the floor is the student without all of them.
    _, _, auto = sections(
        "distill.model=resnet14", "distill.width=4", "prune.drop_blocks=auto", "prune.target_latency_ms=1"
    )
    deepest, _, _ = student_floor.measured_student("student", "resnet14", 4, dataset, auto)
    assert deepest["model"] == "resnet14 x4 -4 blocks" and deepest["droppable"] == 0
    # `edgeforge floor` shows each such student whole as well: the first depth auto tries. Not the teacher, nor a
    # model without such blocks.
    models = [("student", "resnet14", 4), ("asked", "cnn", 4), ("teacher", "resnet8", 4)]
    measured = student_floor.measured_models(models, dataset, auto)
    assert [row["model"] for row, _, _ in measured] == ["resnet14 x4", "resnet14 x4 -4 blocks", "cnn x4", "resnet8 x4"]
    for _, candidates, _ in measured:
        candidates.close()
    # Without a budget auto removes no block in the prune stage, and the floor is the whole student's.
    _, _, unbudgeted = sections("distill.model=resnet14", "distill.width=4", "prune.drop_blocks=auto")
    whole, _, _ = student_floor.measured_student("student", "resnet14", 4, dataset, unbudgeted)
    assert whole["model"] == "resnet14 x4" and whole["dropped_blocks"] == [] and whole["droppable"] == 4
    # A student with fewer blocks than prune.drop_blocks asks is refused with the config, before anything trains.
    with pytest.raises(ConfigError) as refused:
        sections("distill.model=resnet8_s2", "distill.width=4", "prune.drop_blocks=2", "prune.target_latency_ms=100")
    assert str(refused.value) == (
        "prune.drop_blocks=2: resnet8_s2 x4 has 1 residual block with an identity shortcut to drop (1); set "
        "prune.drop_blocks to at most 1 (depth pruning knows the built-in ResNets' and MobileNetV2's blocks)"
    )


def test_the_check_passes_a_student_faster_unpruned_than_at_its_floor(tmp_path, monkeypatch):
    timed = []

    def p50(self, path):  # the floor's 2 rounds come first and miss; the unpruned student's then meet the limit
        timed.append(path)
        return (1.0 if len(timed) <= 2 else 0.01), "fixed"

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    _, distill, prune = sections("prune.search_repeats=2", "prune.target_latency_ms=0.1")
    assert student_floor.floor_check(digits(tmp_path), distill, prune) is None
    assert len(timed) == 4


def test_the_floor_check_is_skipped_without_a_budget_or_without_pruning(tmp_path, sized):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import run_pipeline
    from tests.conftest import FAST

    store = ArtifactStore(tmp_path / "artifacts")
    budget = load_config(overrides=(*FAST, *FP32, "prune.target_latency_ms=0.000001"))
    run_pipeline(budget, store, target="distill")  # no prune stage in this run: its budget is not this run's
    assert sized == []
    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--skip-floor-check" in help_text


def test_a_student_that_meets_the_budget_only_pruned_is_told_of_its_stride_2_variant(tmp_path, monkeypatch):
    """The rounds alternate student, variant (both unpruned): the advice reads the medians of each."""
    timed, times = [], [0.2, 0.05]  # the student over the 0.09 ms limit, the variant within

    def p50(self, path):
        timed.append(path)
        return times[(len(timed) - 1) % 2], "fixed"  # the times of the case being run

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    dataset = digits(tmp_path)
    _, distill, prune = sections(
        "distill.model=resnet8", "distill.width=4", "prune.search_repeats=3", "prune.target_latency_ms=0.1"
    )
    advice = student_floor.variant_advice(dataset, distill, prune)
    assert advice == (
        "prune.target_latency_ms=0.1: resnet8 x4 meets it only pruned (unpruned 0.2000 ms against 0.0900 ms after "
        "prune.search_margin), its stride-2 variant resnet8_s2 x4 with every channel (0.0500 ms): --set "
        "distill.model=resnet8_s2 may keep more accuracy than pruning (`edgeforge floor` measures both)"
    )
    assert len(timed) == 6  # 3 interleaved rounds of two models
    for case in ((0.05, 0.04), (0.2, 0.095)):  # the student meets it unpruned; the variant does not either
        times[:] = case
        assert student_floor.variant_advice(dataset, distill, prune) is None
    timed.clear()
    _, cnn, prune = sections("distill.model=cnn", "distill.width=4", "prune.target_latency_ms=0.1")
    assert student_floor.variant_advice(dataset, cnn, prune) is None and timed == []  # no variant: nothing timed


def test_under_auto_a_student_is_measured_at_both_depths_and_an_alternative_whole_only(tmp_path):
    dataset = digits(tmp_path)
    _, _, prune = sections("distill.model=resnet8", "distill.width=4", "prune.target_latency_ms=1")
    models = [("student", "resnet8", 4), ("alternative", "resnet8_s2", 4)]
    measured = student_floor.measured_models(models, dataset, prune)
    for _, candidates, _ in measured:
        candidates.close()
    # The prune stage trains an alternative whole: its blocks are never removed, so it is not measured without them.
    assert [row["model"] for row, _, _ in measured] == ["resnet8 x4", "resnet8 x4 -1 block", "resnet8_s2 x4"]
