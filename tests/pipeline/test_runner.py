import pytest

from pipeline.cache import ArtifactStore
from pipeline.errors import ConfigError
from pipeline.runner import downstream_of, get_stage, load_config, needed_stages, plan_keys, run_pipeline
from pipeline.training import checkpoints
from stages import STAGES, teacher
from tests.conftest import TINY


def names(stages):
    return [s.NAME for s in stages]


def test_a_stage_needs_only_its_upstream():
    assert names(needed_stages("teacher")) == ["data", "teacher"]
    assert names(needed_stages("quantize")) == ["data", "teacher", "distill", "prune", "export", "quantize"]


def test_force_reaches_downstream_only():
    assert downstream_of({"prune"}) == {"prune", "export", "quantize", "bench", "report"}


def test_changing_one_stage_changes_its_key_and_downstream_keys_only(tmp_path):
    store = ArtifactStore(tmp_path)
    before = plan_keys(load_config(), list(STAGES), store)
    after = plan_keys(load_config(overrides=["prune.ratio=0.4"]), list(STAGES), store)
    assert [name for name in before if before[name] != after[name]] == [
        "prune",
        "export",
        "quantize",
        "bench",
        "report",
    ]


def test_unknown_stage():
    with pytest.raises(ConfigError, match=r"^unknown stage 'foo'; stages: data, teacher, distill"):
        get_stage("foo")


def test_a_failing_stage_publishes_nothing_and_keeps_upstream(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    config = load_config(overrides=TINY)

    def crash(params, inputs, out_dir):
        (out_dir / "model.pt").write_bytes(b"half-written")
        raise RuntimeError("killed mid-stage")

    monkeypatch.setattr(teacher, "run", crash)
    with pytest.raises(RuntimeError, match="killed mid-stage"):
        run_pipeline(config, store, target="teacher")
    left = [p.name for p in (tmp_path / "cache" / "teacher").iterdir() if not p.name.startswith(".lock-")]
    assert left == []  # no entry, and no temp dir: there was no checkpoint to keep
    data_key = plan_keys(config, needed_stages("data"), store)["data"]
    assert store.lookup("data", data_key) is not None


def test_an_interrupted_training_stage_resumes_to_the_same_result(tmp_path, monkeypatch, caplog):
    config = load_config(overrides=["teacher.width=4", "teacher.epochs=3"])
    saves = []
    original_save = checkpoints.save

    def save_then_die_after_epoch_2(path, state):
        original_save(path, state)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", save_then_die_after_epoch_2)
    interrupted = ArtifactStore(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, interrupted, target="teacher")
    key = plan_keys(config, needed_stages("teacher"), interrupted)["teacher"]
    assert interrupted.lookup("teacher", key) is None
    assert (interrupted.cache / "teacher" / f".tmp-{key}" / "checkpoints" / "teacher.pt").is_file()

    monkeypatch.setattr(checkpoints, "save", original_save)
    caplog.set_level("INFO")
    resumed = run_pipeline(config, interrupted, target="teacher")[-1].artifact
    assert "teacher: resuming after epoch 2" in caplog.text
    assert not (interrupted.cache / "teacher" / f".tmp-{key}").exists()  # checkpoint gone once published
    assert [row["epoch"] for row in resumed.metrics["history"]] == [1, 2, 3]

    clean = run_pipeline(config, ArtifactStore(tmp_path / "clean"), target="teacher")[-1].artifact
    assert resumed.manifest["files"]["model.pt"] == clean.manifest["files"]["model.pt"]


def test_editing_a_user_model_changes_the_teacher_key(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n\ndef build(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    store = ArtifactStore(tmp_path / "artifacts")
    config = load_config(overrides=["teacher.model=my_models:build"])
    before = plan_keys(config, list(STAGES), store)
    (tmp_path / "my_models.py").write_text((tmp_path / "my_models.py").read_text() + "# tuned\n")
    after = plan_keys(config, list(STAGES), store)
    assert before["data"] == after["data"] and before["teacher"] != after["teacher"]


def test_the_stages_that_measure_have_the_machine_in_their_keys(tmp_path, monkeypatch):
    from pipeline.runtime import environment

    store = ArtifactStore(tmp_path)
    sets = ["prune.target_latency_ms=1", "quantize.search=true"]
    before = plan_keys(load_config(overrides=sets), list(STAGES), store)
    other = {**environment.identity(), "cpu_flags_sha256": "another CPU"}
    monkeypatch.setattr(environment, "identity", lambda: other)
    after = plan_keys(load_config(overrides=sets), list(STAGES), store)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"prune", "export", "quantize", "bench", "report"}  # prune and quantize measure; the rest follow
    # Without a budget and a variant search, prune and quantize measure nothing: another machine reuses them.
    plain_before = plan_keys(load_config(), list(STAGES), store)
    monkeypatch.undo()
    plain_after = plan_keys(load_config(), list(STAGES), store)
    assert {n for n in plain_before if plain_before[n] != plain_after[n]} == {"bench", "report"}


def test_the_decoders_versions_are_in_the_data_key(tmp_path, monkeypatch):
    from pipeline.datasets import catalog

    store = ArtifactStore(tmp_path)
    before = plan_keys(load_config(), list(STAGES), store)["data"]
    monkeypatch.setattr(catalog, "version", lambda name: "0.0-other")
    assert plan_keys(load_config(), list(STAGES), store)["data"] != before  # digits: scikit-learn's version
