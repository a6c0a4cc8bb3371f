"""The command line as a user meets it: JSON output, caching, exit codes and one-line errors."""

import json
import re
import statistics
import subprocess

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.reporting.gates import fastest_timing_ms
from tests.conftest import TINY, edgeforge_command

SETS = [arg for item in TINY for arg in ("--set", item)]


def edgeforge(store_root, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(store_root), *args])


def stages_of(result):
    assert result.exit_code == 0, result.output
    return {stage["name"]: stage["cached"] for stage in json.loads(result.stdout)["stages"]}


def test_second_run_reuses_every_stage_and_releases(tiny_run):
    store, _ = tiny_run
    result = edgeforge(store.root, "run", *SETS, "--json")
    assert stages_of(result) == dict.fromkeys(
        ["data", "teacher", "distill", "prune", "export", "quantize", "bench", "report"], True
    )
    summary = json.loads(result.stdout)
    assert summary["signoff_passed"] is True
    release = store.root / "release"
    assert sorted(p.name for p in release.iterdir()) == [
        "deploy.json",
        "labels.txt",
        "model.onnx",
        "predict.py",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert json.loads((release / "report.json").read_text())["edge_model"] == summary["edge_model"]


@pytest.mark.slow  # re-runs quantize to report (the bench) through the CLI
def test_a_param_change_reruns_that_stage_and_after_only(tiny_run):
    store, _ = tiny_run
    # A quantize parameter: the stages after it are the cheapest to re-run (no training, no export).
    cached = stages_of(edgeforge(store.root, "run", *SETS, "--set", "quantize.calibration_samples=128", "--json"))
    assert cached == {
        "data": True,
        "teacher": True,
        "distill": True,
        "prune": True,
        "export": True,
        "quantize": False,
        "bench": False,
        "report": False,
    }


def test_stage_runs_only_what_it_needs_and_status_shows_it(tmp_path):
    assert stages_of(edgeforge(tmp_path, "stage", "teacher", *SETS, "--json")) == {"data": False, "teacher": False}
    status = json.loads(edgeforge(tmp_path, "status", *SETS, "--json").stdout)["stages"]
    assert [(s["name"], s["cached"]) for s in status[:3]] == [("data", True), ("teacher", True), ("distill", False)]
    assert all(len(s["key"]) == 64 for s in status)
    assert stages_of(edgeforge(tmp_path, "stage", "teacher", *SETS, "--force", "teacher", "--json")) == {
        "data": True,
        "teacher": False,
    }


def test_a_failed_gate_exits_1_after_writing_the_report(tiny_run):
    store, _ = tiny_run
    result = edgeforge(store.root, "run", *SETS, "--set", "signoff.max_size_bytes=1000")
    assert result.exit_code == 1
    # Every model is over 1,000 bytes: each fails that gate alone, and the line names the three smallest, the
    # smallest first, as the closest to a pass.
    line = result.stderr.strip().splitlines()[-1]
    one = r"\w+ \(max_size_bytes [\d,]+ against 1,000\)"
    closest = rf"closest to passing: {one}; {one}; {one}; 2 more \(see release/report.md\)"
    assert re.fullmatch(rf"error: sign-off failed: max_size_bytes; {closest}", line), line
    named = re.findall(r"(\w+) \(max_size_bytes ([\d,]+)", line)
    report = json.loads((store.root / "release" / "report.json").read_text())
    sizes = {m["name"]: m["size_bytes"] for m in report["models"]}
    assert [int(size.replace(",", "")) for _, size in named] == sorted(sizes.values())[:3]
    assert [sizes[name] for name, _ in named] == sorted(sizes.values())[:3]
    assert report["signoff"]["passed"] is False
    assert edgeforge(store.root, "report").exit_code == 1


def test_a_failed_speedup_gate_without_a_budget_names_the_budget_from_the_teachers_timing(tiny_run):
    store, _ = tiny_run
    result = edgeforge(store.root, "run", *SETS, "--set", "signoff.min_speedup_vs_teacher=1000")
    assert result.exit_code == 1
    report = json.loads((store.root / "release" / "report.json").read_text())
    teacher = next(m for m in report["models"] if m["name"] == "teacher")
    budget_ms = fastest_timing_ms(teacher, 1, "cpu") / 1000
    hint = "--set prune.target_speedup_vs_teacher=1000 has the prune stage time the teacher and search for a model "
    hint += f"that fast (here {budget_ms:.4g} ms, the teacher's fastest timing in this bench / 1000"
    assert hint in result.stderr.strip().splitlines()[-1]
    assert hint in (store.root / "release" / "report.md").read_text()
    assert hint in (store.root / "release" / "report.html").read_text().replace("&#x27;", "'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--set", "prune.ratio=1.5"], "error: prune.ratio=1.5 is not allowed: expected a fraction of channels"),
        (["run", "--set", "teacher.epoch=3"], "error: unknown config key 'teacher.epoch'; known keys of teacher:"),
        (["run", "--set", "distill.model=vgg"], "error: distill.model='vgg' is not a known model; available: cnn, mlp"),
        (["run", "--set", "data.name=imagenet"], "error: data.name='imagenet' is not a known dataset"),
        (["stage", "deploy"], "error: unknown stage 'deploy'; stages: data, teacher"),
        (["run", "--force", "deploy"], "error: unknown stage 'deploy'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tiny_run, args, message):
    store, _ = tiny_run
    before = sorted(p.relative_to(store.root) for p in store.cache.rglob("*"))
    result = edgeforge(store.root, *args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # ended by the CLI, not a crash
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(p.relative_to(store.root) for p in store.cache.rglob("*")) == before


@pytest.mark.slow
def test_bad_input_exits_2_from_a_fresh_interpreter(tmp_path):
    """The same as a user's shell sees it: the process's own exit code and one line on stderr."""
    process = subprocess.run(
        edgeforge_command(tmp_path, "run", "--set", "prune.ratio=1.5"), capture_output=True, text=True
    )
    assert process.returncode == 2
    assert process.stderr.startswith("error: prune.ratio=1.5 is not allowed: expected a fraction of channels")
    assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr
    assert not (tmp_path / "cache").exists()


def test_report_without_a_run_says_what_to_do(tmp_path):
    result = edgeforge(tmp_path, "report")
    assert result.exit_code == 1
    assert result.stderr == f"error: no report in {tmp_path / 'release'}: run `edgeforge run` first\n"


def test_verify_finds_an_edited_artifact(tiny_run, tmp_path):
    import shutil

    store, results = tiny_run
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    ok = edgeforge(copy, "verify")
    assert ok.exit_code == 0 and ok.stdout.endswith("cached artifacts verified\n")
    key = results["teacher"].key
    (copy / "cache" / "teacher" / key / "model.pt").write_bytes(b"edited")
    bad = edgeforge(copy, "verify")
    assert bad.exit_code == 1
    assert f"teacher/{key[:12]}: model.pt sha256 mismatch" in bad.stdout
    assert "error: 1 of" in bad.stderr


@pytest.mark.slow
def test_no_wait_fails_fast_while_another_process_holds_the_stage(tmp_path):
    import fcntl

    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, needed_stages, plan_keys

    store = ArtifactStore(tmp_path)
    key = plan_keys(load_config(overrides=TINY), needed_stages("data"), store)["data"]
    (tmp_path / "cache" / "data").mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "cache" / "data" / f".lock-{key}", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.run(
            edgeforge_command(tmp_path, "stage", "data", "--no-wait", sets=TINY),
            capture_output=True,
            text=True,
        )
    assert process.returncode == 1
    assert process.stderr.startswith("error: data: another edgeforge process is running this stage")


def test_a_full_disk_is_one_line_and_publishes_nothing(tmp_path, monkeypatch):
    import errno

    from pipeline.cache import ArtifactStore

    def disk_full(self, stage, key, temp_dir, manifest):
        raise OSError(errno.ENOSPC, "No space left on device", str(temp_dir / "train_images.npy"))

    monkeypatch.setattr(ArtifactStore, "publish", disk_full)
    result = edgeforge(tmp_path, "stage", "data", *SETS)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot write ") and "No space left on device; free space" in result.stderr
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir() if not p.name.startswith(".lock-")] == []


def test_a_diverging_loss_names_epoch_step_and_learning_rate(tmp_path):
    result = edgeforge(tmp_path, "stage", "teacher", "--set", "teacher.lr=1e30", "--set", "teacher.width=4")
    assert result.exit_code == 1
    assert re.match(
        r"error: teacher: loss became (nan|inf) at epoch 1 step \d+ \(lr [\d.e+]+\); lower the learning rate",
        result.stderr.splitlines()[-1],
    )
    assert [p.name for p in (tmp_path / "cache" / "teacher").iterdir() if not p.name.startswith(".lock-")] == []


def test_signoff_rechecks_a_report_and_compare_flags_an_accuracy_drop(tiny_run, tmp_path):
    store, results = tiny_run
    report_file = results["report"].artifact.file("report.json")
    passed = edgeforge(store.root, "signoff", str(report_file))
    assert passed.exit_code == 0 and passed.stdout.startswith("recomputed sign-off: PASSED")

    tampered = json.loads(report_file.read_text())
    tampered["config"]["signoff"]["min_accuracy"] = 0.999  # stored verdict still says passed
    tampered_file = tmp_path / "tampered.json"
    tampered_file.write_text(json.dumps(tampered))
    failed = edgeforge(store.root, "signoff", str(tampered_file))
    assert failed.exit_code == 1 and failed.stdout.startswith("recomputed sign-off: FAILED")
    assert failed.stdout.splitlines()[1].startswith("closest to passing: ") and "min_accuracy" in failed.stdout
    assert "closest to passing" not in passed.stdout

    worse = json.loads(report_file.read_text())
    worse["models"][1]["accuracy"] -= 0.05
    worse_file = tmp_path / "worse.json"
    worse_file.write_text(json.dumps(worse))
    same = edgeforge(store.root, "compare", str(report_file), str(report_file))
    assert same.exit_code == 0
    dropped = edgeforge(store.root, "compare", str(report_file), str(worse_file), "--json")
    assert dropped.exit_code == 1
    assert any(r["model"] == worse["models"][1]["name"] for r in json.loads(dropped.stdout)["regressions"])


@pytest.mark.slow  # the command's default: at least 200 runs and 2 s per batch size
def test_bench_any_onnx_file_and_refuse_a_broken_one(tiny_run, tmp_path):
    _, results = tiny_run
    model = results["export"].artifact.file("student.onnx")
    result = edgeforge(tmp_path, "bench", str(model), "--batch", "1", "--batch", "4", "--provider", "cpu", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [(r["provider"], r["batch"]) for r in rows] == [("cpu", 1), ("cpu", 4)]
    assert all(r["runs"] >= 200 and r["p90_ci_ms"][0] <= r["p90_ms"] <= r["p90_ci_ms"][1] for r in rows)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:100])
    refused = edgeforge(tmp_path, "bench", str(broken))
    assert refused.exit_code == 2
    assert refused.stderr.startswith(f"error: {broken}: not an ONNX model or truncated")


@pytest.mark.slow
def test_two_benches_of_the_same_models_compare_clean(tiny_run, tmp_path):
    """Round-to-round noise is no regression: one bench of 20 interleaved rounds, split into two reports of 10
    (even and odd rounds: two benches of the same models, without the drift of a machine whose load changes between
    two runs, which a CI machine running other tests beside this one has), compares clean. With 5 rounds a side,
    "every new round slower than every old one" happens by chance once in 252 per model and batch, and CI saw it
    once in 10 such pairs; with 10 a side, once in 184,756."""
    store, _ = tiny_run
    result = edgeforge(store.root, "run", *SETS, "--set", "bench.rounds=20", "--force", "bench", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((store.root / "release" / "report.json").read_text())
    halves = []
    for parity in (0, 1):
        half = json.loads(json.dumps(report))
        for model in half["models"]:
            for stats in model["latency"]["CPUExecutionProvider"].values():
                stats["round_medians_ms"] = stats["round_medians_ms"][parity::2]
                stats["p50_ms"] = statistics.median(stats["round_medians_ms"])
        halves.append(tmp_path / f"half{parity}.json")
        halves[-1].write_text(json.dumps(half))
    for old, new in (halves, halves[::-1]):
        compared = edgeforge(tmp_path, "compare", str(old), str(new), "--json")
        assert compared.exit_code == 0, compared.output
        assert json.loads(compared.stdout)["regressions"] == []
