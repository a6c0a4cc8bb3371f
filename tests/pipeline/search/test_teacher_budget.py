"""prune.target_speedup_vs_teacher: the budget as the teacher's fastest timing over a factor, measured where the
search runs.

The models are built and exported for real; their "latency" is the ONNX file's size in MB (Candidates.p50 patched),
so what is asserted is which file is timed, how often, and what budget follows, never this machine's timings.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.runner import load_config
from pipeline.search import prune_candidates, teacher_budget
from stages.prune import Params, fingerprint
from tests.pipeline.search.test_student_floor import digits


@pytest.fixture
def sized(monkeypatch):
    """Every file timed 'measures' its size in MB; each call is logged (the path)."""
    timed = []

    def p50(self, path):
        timed.append(path)
        return path.stat().st_size / 1e6, "size"

    monkeypatch.setattr(prune_candidates.Candidates, "p50", p50)
    return timed


def test_the_budget_is_the_teachers_fp32_timing_over_the_factor_from_a_model_or_its_onnx_file(tmp_path, sized):
    from pipeline.models.factory import build_model
    from pipeline.runtime.onnx_export import export_onnx
    from pipeline.training.recipes import spec_for

    dataset = digits(tmp_path)
    spec = spec_for(dataset, "cnn", 8)
    teacher = build_model(spec)
    # target_format fastest would time an int8 form too (a smaller file here): the teacher is benched in fp32 only.
    prune = Params(target_speedup_vs_teacher=4.0, search_repeats=3, target_format="fastest", retime_gap_s=0)
    measured = teacher_budget.measured(teacher, spec, None, dataset, prune)
    # Timed in teacher_budget.TEACHER_REPEATS sessions, more than prune.search_repeats 3.
    assert len(sized) == 5 and all(path.name.endswith(".onnx") and "int8" not in path.name for path in sized)
    size_mb = measured["runs_ms"][0]
    assert measured["runs_ms"] == [size_mb] * 5 and measured["fastest_ms"] == measured["p50_ms"] == size_mb
    assert measured["speedup"] == 4.0
    assert measured["budget_ms"] == pytest.approx(size_mb / 4)
    # The same network as an ONNX file (a teacher from another framework) is timed as it is.
    path = tmp_path / "teacher.onnx"
    export_onnx(teacher, spec, path, prune_candidates.EXPORT_OPSET)
    from_file = teacher_budget.measured(None, None, path, dataset, prune)
    assert sized[-1] == path and from_file["p50_ms"] == path.stat().st_size / 1e6 == pytest.approx(size_mb)
    # Resolved, it is a budget in ms as if the user had set it; without a speed-up nothing changes.
    resolved = teacher_budget.resolved(prune, measured)
    assert resolved.target_latency_ms == measured["budget_ms"] and resolved.target_speedup_vs_teacher is None
    assert resolved == dataclasses.replace(
        prune, target_latency_ms=measured["budget_ms"], target_speedup_vs_teacher=None
    )
    assert teacher_budget.resolved(prune, None) is prune
    assert teacher_budget.summary(measured).startswith(
        f"budget {size_mb / 4:.4g} ms: the teacher's fastest timing {size_mb:.4g} ms (of 5) / "
    )


def test_the_budget_reads_the_teachers_fastest_timing_not_its_median(tmp_path, monkeypatch):
    from pipeline.models.factory import build_model
    from pipeline.training.recipes import spec_for

    # The 2-thread teacher of BENCHMARKS.md, switching between a fast and a slow timing from one session to the next.
    timings = iter([0.60, 0.42, 0.61, 0.59, 0.62, 0.60, 0.61])
    monkeypatch.setattr(prune_candidates.Candidates, "p50", lambda self, path: (next(timings), "2 threads"))
    dataset = digits(tmp_path)
    spec = spec_for(dataset, "cnn", 8)
    waits = []
    monkeypatch.setattr(teacher_budget.time, "sleep", waits.append)
    prune = Params(target_speedup_vs_teacher=6.0, search_repeats=7)  # more than TEACHER_REPEATS: all 7
    measured = teacher_budget.measured(build_model(spec), spec, None, dataset, prune)
    assert measured["runs_ms"] == [0.60, 0.42, 0.61, 0.59, 0.62, 0.60, 0.61] and measured["p50_ms"] == 0.60
    # The sessions are prune.retime_gap_s apart: five back to back once all fell in one slow episode of the host.
    assert waits == [prune.retime_gap_s] * 6 and prune.retime_gap_s == 10
    assert measured["fastest_ms"] == 0.42 and measured["budget_ms"] == pytest.approx(0.07)


def test_a_speedup_budget_is_one_of_two_ways_to_set_it_and_keys_the_decision_by_the_machine(tmp_path):
    with pytest.raises(ConfigError, match=r"prune.target_speedup_vs_teacher=0 is not allowed: expected a factor > 0"):
        Params(target_speedup_vs_teacher=0)
    both = r"prune.target_speedup_vs_teacher=5.0 is not allowed: expected null while prune.target_latency_ms is set "
    both += r"\(0.1\): one budget"
    with pytest.raises(ConfigError, match=both):
        load_config(overrides=["prune.target_latency_ms=0.1", "prune.target_speedup_vs_teacher=5"])
    assert fingerprint(Params(), tmp_path) == {}
    assert set(fingerprint(Params(target_speedup_vs_teacher=5), tmp_path)) == {"machine"}
    # Where it is measured must be where the edge model is gated, as for a budget in ms.
    with pytest.raises(ConfigError, match=r"prune.target_batch=32 and prune.target_provider='cpu' must be where"):
        load_config(overrides=["prune.target_speedup_vs_teacher=5", "prune.target_batch=32"])
    # And at the threads the bench times it at: the sign-off's gate reads the bench's timing of the teacher.
    one_thread = ["prune.target_speedup_vs_teacher=5", "prune.target_threads=1"]
    with pytest.raises(ConfigError, match=r"prune.target_threads=1 times the teacher at 1 thread\(s\) for the budget "):
        load_config(overrides=one_thread)
    with pytest.raises(ConfigError, match=r"tuned over bench.threads \(now \[1, 2\]\): set bench.threads=\[1\] as"):
        load_config(overrides=[*one_thread, "bench.threads=[1,2]"])
    assert load_config(overrides=[*one_thread, "bench.threads=[1]"]).section("prune").target_threads == 1
    assert load_config(overrides=["prune.target_latency_ms=0.1", "prune.target_threads=1"])  # a budget in ms: no gap
    # A bench held to one thread holds the search to it: else its candidates measure faster than the gate will.
    for budget in ("prune.target_latency_ms=0.1", "prune.target_speedup_vs_teacher=5"):
        held = [budget, "bench.threads=[1]"]
        assert load_config(overrides=held).section("prune").target_threads == 1  # null follows the device's count
        with pytest.raises(ConfigError, match=r"target_threads=2 .* times only bench.threads=\[1\]: set prune.targ"):
            load_config(overrides=[*held, "prune.target_threads=2"])
        assert load_config(overrides=[*held, "prune.target_threads=1"]).section("bench").threads == (1,)
        # Several counts are no one count to follow: the search would tune over every core, not over these.
        with pytest.raises(ConfigError, match=r"prune.target_threads=null times the search's candidates at its own"):
            load_config(overrides=[budget, "bench.threads=[1,2]"])
    assert load_config(overrides=["bench.threads=[1]"])  # no budget, no search


def teacher_timed_in_turn(monkeypatch, *p50s: float) -> None:
    """Each timing of the teacher (teacher_budget.of_artifact) gives the next of `p50s`, a factor-6 budget from it."""
    timings = iter(p50s)

    def of_artifact(teacher_dir, dataset, prune):
        p50_ms = next(timings)
        return {
            **dict.fromkeys(("fastest_ms", "p50_ms"), p50_ms),
            "runs_ms": [p50_ms],
            "settings": {},
            "speedup": 6.0,
            "budget_ms": p50_ms / 6,
        }

    monkeypatch.setattr(teacher_budget, "of_artifact", of_artifact)


def test_a_resumed_prune_stage_keeps_the_teacher_timing_its_saved_searches_were_made_for(tmp_path, monkeypatch, caplog):
    # Each timing of the teacher comes out faster (this VM's drift between runs: 0.5996 then 0.4094 ms).
    teacher_timed_in_turn(monkeypatch, 0.6, 0.4)
    prune = Params(target_speedup_vs_teacher=6.0)
    work = tmp_path / "work"
    caplog.set_level("INFO")
    first, teacher = teacher_budget.applied(prune, tmp_path / "teacher", None, work)
    assert first.target_latency_ms == pytest.approx(0.1) and teacher["p50_ms"] == 0.6
    assert (work / "checkpoints" / teacher_budget.SAVED).is_file()
    # Killed after its searches, the stage resumes with the budget they answered, not a new timing's.
    resumed, again = teacher_budget.applied(prune, tmp_path / "teacher", None, work)
    assert resumed == first and again == teacher
    assert (
        "the teacher's fastest timing 0.6 ms (of 1) / prune.target_speedup_vs_teacher 6, as timed before this run "
        in (caplog.text)
    )
    # Another work directory (another key, or after the stage published) times the teacher again.
    assert teacher_budget.applied(prune, tmp_path / "teacher", None, tmp_path / "other")[1]["p50_ms"] == 0.4


def test_the_floor_check_keeps_its_teacher_timing_for_the_prune_stage(tmp_path, monkeypatch, caplog):
    from pipeline.cache import ArtifactStore

    teacher_timed_in_turn(monkeypatch, 0.6, 0.4)  # before the student trains, and again after (this VM's drift)
    store, prune, key = ArtifactStore(tmp_path / "artifacts"), Params(target_speedup_vs_teacher=6.0), "a" * 64
    checked = teacher_budget.kept_for_prune(store, key, tmp_path / "teacher", None, prune)
    assert checked["p50_ms"] == 0.6 and checked["timed_by"] == teacher_budget.FLOOR_CHECK
    # The prune stage of that key, after the student trained: the budget the floor check passed, not a new timing.
    caplog.set_level("INFO")
    with store.locked("prune", key):
        resolved, teacher = teacher_budget.applied(prune, tmp_path / "teacher", None, store.temp_dir("prune", key))
    assert teacher == checked and resolved.target_latency_ms == pytest.approx(0.1)
    assert "prune.target_speedup_vs_teacher 6, as timed by the run's floor check before the student trained" in (
        caplog.text
    )
    # While another process runs a prune stage (its lock held), the check times the teacher and keeps nothing.
    other = "b" * 64
    with store.locked("prune", other):
        alone = teacher_budget.kept_for_prune(store, other, tmp_path / "teacher", None, prune)
    assert alone["p50_ms"] == 0.4 and not (store.cache / "prune" / f".tmp-{other}").exists()


def test_edgeforge_floor_times_the_untrained_teacher_for_a_speedup_budget(tmp_path, sized):
    def floor(*sets):
        args = [
            arg
            for item in ("prune.target_format=fp32", "prune.search_repeats=1", "prune.retime_gap_s=0", *sets)
            for arg in ("--set", item)
        ]
        return CliRunner().invoke(cli, ["--artifacts", str(tmp_path), "floor", *args])

    out = floor("prune.target_speedup_vs_teacher=1000000")  # MB of ONNX file: no student is a millionth of a teacher
    assert out.exit_code == 1
    error = out.output.strip().splitlines()[-1]
    assert error.startswith("error: budget ") and "ms: the teacher's fastest timing " in error
    assert "/ prune.target_speedup_vs_teacher 1e+06; prune.target_latency_ms=" in error and "cannot reach" in error
    met = floor("prune.target_speedup_vs_teacher=0.5")  # twice the teacher's size: the student is smaller
    assert met.exit_code == 0, met.output
    budget_line = met.output.strip().splitlines()[-1]
    assert budget_line.startswith("budget ") and ", the teacher's fastest timing " in budget_line
    assert " / 0.5)" in budget_line
    # The teacher timed for the budget is its fp32 file, the table's teacher row the same network: the same size.
    teacher_row = next(line for line in met.output.splitlines() if line.startswith("teacher "))
    teacher_mb = float(teacher_row.split()[3])
    assert f"the teacher's fastest timing {teacher_mb:.4f} ms / 0.5" in budget_line
    assert np.isclose(float(budget_line.split()[1]), teacher_mb / 0.5, rtol=1e-3)


@pytest.mark.slow  # trains the FAST teacher
def test_a_run_for_a_speedup_budget_checks_the_floor_once_the_teacher_is_trained(tmp_path, sized):
    from pipeline.cache import ArtifactStore
    from pipeline.errors import StageError
    from pipeline.runner import run_pipeline
    from tests.conftest import FAST

    store = ArtifactStore(tmp_path / "artifacts")
    sets = ("prune.target_format=fp32", "prune.search=uniform", "prune.search_repeats=2")
    config = load_config(overrides=(*FAST, *sets, "prune.target_speedup_vs_teacher=1000000"))
    with pytest.raises(StageError) as failed:
        run_pipeline(config, store, target="prune")
    message = str(failed.value)
    assert message.startswith("budget ") and "/ prune.target_speedup_vs_teacher 1e+06; " in message
    assert "cnn x8 cannot reach it" in message
    # The teacher trained (its latency is the budget's) and was timed twice; the student did not train.
    assert sized[0].name.startswith("candidate-") and len({path.name for path in sized[:2]}) == 1
    assert [e for e in (store.cache / "teacher").iterdir() if not e.name.startswith(".")]
    assert not (store.cache / "distill").exists()
    # The timing is kept for the prune stage of this config: a run that goes on (--skip-floor-check) searches for it.
    assert len(list(store.cache.glob(f"prune/.tmp-*/checkpoints/{teacher_budget.SAVED}"))) == 1


def test_the_alternatives_are_decided_against_the_teacher_timed_again_before_them(tmp_path, monkeypatch, caplog):
    """The CIFAR-10 profile's numbers (BENCHMARKS.md, "The profile at prune VERSION 25"): the stage's five sessions
    of the teacher timed 0.4626 ms at their fastest, a 0.0771 ms budget; the bench's fastest was 0.4074 (a 0.0679 ms
    gate), and resnet8_s2 x24, trained at 0.0715 ms untrained, failed there."""
    from types import SimpleNamespace

    from pipeline.search import prune_budget
    from pipeline.training.prune_alternatives import widest_within

    teacher_timed_in_turn(monkeypatch, 0.4626, 0.4074, 0.39)
    work, teacher_dir = tmp_path / "work", tmp_path / "teacher"
    searched, teacher = teacher_budget.applied(Params(target_speedup_vs_teacher=6.0), teacher_dir, None, work)
    assert searched.target_latency_ms == pytest.approx(0.0771)
    caplog.set_level("INFO")
    decided, pooled = teacher_budget.before_alternatives(searched, teacher, teacher_dir, None, work)
    # The budget the alternatives meet: the fastest of every timing of the teacher in the stage, over the factor.
    assert decided == dataclasses.replace(searched, target_latency_ms=0.4074 / 6)
    assert pooled == {
        **teacher,  # the budget searched for, as it was
        "before_alternatives": {
            "runs_ms": [0.4074],
            "settings": {},
            "fastest_ms": 0.4074,
            "budget_ms": pytest.approx(0.4074 / 6),
        },
    }
    assert "the teacher timed again before the alternatives: 0.4074 ms; budget 0.0679 ms (was 0.0771)" in caplog.text
    assert teacher_budget.summary(pooled).endswith("0.0679 ms before the alternatives (the teacher timed again); ")
    # Kept in the checkpoints: resumed, the stage decides against the same budget, not a new timing's (0.39).
    assert (work / "checkpoints" / teacher_budget.SAVED_AGAIN).is_file()
    assert teacher_budget.before_alternatives(searched, teacher, teacher_dir, None, work) == (decided, pooled)
    # What it changes: x24 untrained at 0.0689 ms was within the searched limit (0.0694) and is not within the
    # decided one (0.0611), so auto trains x16.
    untrained_ms = {32: 0.0854, 24: 0.0689, 16: 0.0529, 8: 0.04}
    monkeypatch.setattr(
        prune_budget,
        "achieved",
        lambda model, spec, dataset, params, limit_ms=None: {"latency_ms": untrained_ms[spec.width]},
    )
    dataset = SimpleNamespace(train_images=np.zeros((1, 3, 8, 8), np.float32), class_names=["a", "b"])
    assert widest_within("resnet8_s2", (32, 24, 16, 8), dataset, searched, seed=0)[1].width == 24
    assert widest_within("resnet8_s2", (32, 24, 16, 8), dataset, decided, seed=0)[1].width == 16
    # A slower timing later leaves the budget as it was; without a speed-up target nothing is timed.
    slower = {**teacher, "runs_ms": [0.6], "fastest_ms": 0.6}
    assert teacher_budget.pooled(teacher, slower)["before_alternatives"]["budget_ms"] == teacher["budget_ms"]
    assert teacher_budget.before_alternatives(searched, None, teacher_dir, None, tmp_path / "other") == (searched, None)
    assert not (tmp_path / "other").exists()
