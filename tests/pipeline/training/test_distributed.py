"""Data-parallel training under torchrun with gloo on the CPU: two ranks train like one, only rank 0 publishes,
and a rank that fails leaves nothing published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config, plan_keys
from pipeline.training.loop import rank_share
from stages import STAGES
from tests.conftest import FAST, TINY, edgeforge_command

TRAINED = ("teacher", "distill", "prune")


def published(store: ArtifactStore, stage: str) -> list[str]:
    """Names of the published entries of `stage` (work directories and locks start with a dot)."""
    folder = store.cache / stage
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


@pytest.mark.parametrize("size", [1, 5, 64, 65])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_rank_shares_are_disjoint_and_cover_the_batch(size, ranks):
    batch = list(range(size))
    shares = [batch[rank_share(rank, ranks)] for rank in range(ranks)]
    assert sorted(i for share in shares for i in share) == batch
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced: equal gradient weight per rank


@pytest.mark.slow
def test_two_gloo_ranks_train_like_one_and_only_rank_0_publishes(tmp_path, tiny_run):
    single_store, single = tiny_run
    store = ArtifactStore(tmp_path / "artifacts")
    # The student and the pruned model train the same without their baselines beside them (the teacherless
    # student, the from-scratch pruned architecture): leave those out. Fixed session settings: the bench is not
    # what the ranks change.
    sets = (*TINY, "distill.baseline=false", "prune.scratch_baseline=false", "bench.tune=false", "bench.memory=false")
    command = edgeforge_command(store.root, "run", "--nproc", "2", "--json", sets=sets)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON object: only the leader printed
    assert summary["release"] and (store.root / "release" / "model.onnx").is_file()

    keys = plan_keys(load_config(overrides=sets), list(STAGES), store)
    for stage in STAGES:
        assert published(store, stage.NAME) == [keys[stage.NAME]]  # one entry each, nothing half-written
    for name in TRAINED:
        manifest = json.loads((store.entry_dir(name, keys[name]) / "manifest.json").read_text())
        assert manifest["ranks"] == 2
        assert single[name].artifact.manifest["ranks"] == 1
        history = manifest["metrics"]["history"]
        # Each epoch the two shards together covered the training set once.
        assert {row["images"] for row in history} == {single[name].artifact.metrics["history"][0]["images"]}
        two, one = manifest["metrics"]["test_accuracy"], single[name].artifact.metrics["test_accuracy"]
        assert abs(two - one) <= 0.03, (name, two, one)  # same global batch and epochs: same accuracy within noise
    assert store.verify() == (len(STAGES), [])


FLAKY_MODEL = textwrap.dedent(
    """
    import os

    import torch


    class Flaky(torch.nn.Module):
        '''A linear model whose rank 1 raises in training or in the evaluation after training.'''

        def __init__(self, in_channels, num_classes):
            super().__init__()
            self.fc = torch.nn.Linear(in_channels * 64, num_classes)
            self.calls = 0
            self.evaluations = 0

        def forward(self, x):
            self.calls += 1
            self.evaluations += not self.training
            if os.environ.get("RANK") == "1" and self.training == (os.environ["FLAKY_WHEN"] == "train"):
                # In training: the third step. In evaluation: after the two epochs' validation passes, that is in
                # the stage's own evaluation once training (and its last collective) is over.
                if (self.training and self.calls >= 3) or self.evaluations > 2:
                    raise ValueError("rank 1 fails on purpose")
            return self.fc(x.flatten(1))


    def build(in_channels, num_classes):
        return Flaky(in_channels, num_classes)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["train", "eval"])
def test_a_failed_rank_leaves_nothing_published(tmp_path, when):
    """Rank 1 dies mid-training (rank 0 is in a gradient all-reduce) or after its last collective (rank 0 is done
    training): either way the stage fails on every rank and publishes nothing."""
    (tmp_path / "flaky_model.py").write_text(FLAKY_MODEL)
    store = ArtifactStore(tmp_path / "artifacts")
    sets = ("teacher.model=flaky_model:build", "teacher.epochs=2")
    command = edgeforge_command(store.root, "run", "--until", "teacher", "--nproc", "2", sets=sets)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}", "FLAKY_WHEN": when}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert "rank 1 fails on purpose" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: rank 1 of 2 failed first")
    assert published(store, "teacher") == []
    assert len(published(store, "data")) == 1  # the stage before it stays cached


@pytest.mark.slow
def test_a_latency_budget_prune_runs_under_two_ranks(tmp_path):
    """Rank 0 measures and broadcasts the search's decision (and the achieved latency); both ranks then prune the
    same architecture, or DDP's parameter-shape check would fail the fine-tune."""
    store = ArtifactStore(tmp_path / "artifacts")
    sets = (*FAST, "prune.target_latency_ms=1000", "prune.target_threads=1", "prune.target_format=fp32")
    sets += ("prune.search_repeats=1",)  # the default per-layer search, with the uniform one beside it
    command = edgeforge_command(store.root, "run", "--until", "prune", "--nproc", "2", sets=sets)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    key = plan_keys(load_config(overrides=sets), list(STAGES), store)["prune"]
    manifest = json.loads((store.entry_dir("prune", key) / "manifest.json").read_text())
    search = manifest["metrics"]["latency_search"]
    assert manifest["ranks"] == 2 and search["met"] and search["ratio"] == 0.0
    assert search["achieved"]["latency_ms"] > 0 and len(search["trace"]) == 1
    assert search["search"] == "per_layer" and search["uniform_baseline"]["same_model"]  # both arms: one model


@pytest.mark.slow
def test_blocks_removed_under_two_ranks_are_the_leaders_choice(tmp_path):
    """prune.drop_blocks: rank 0 scores the blocks and tells rank 1, so both fine-tune the same architecture."""
    store = ArtifactStore(tmp_path / "artifacts")
    sets = (*FAST, "distill.model=resnet14", "distill.width=4", "prune.drop_blocks=2", "prune.scratch_baseline=false")
    command = edgeforge_command(store.root, "run", "--until", "prune", "--nproc", "2", sets=sets)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    key = plan_keys(load_config(overrides=sets), list(STAGES), store)["prune"]
    manifest = json.loads((store.entry_dir("prune", key) / "manifest.json").read_text())
    blocks = manifest["metrics"]["depth"]["blocks"]
    assert manifest["ranks"] == 2 and len(blocks) == 2
    model_json = json.loads((store.entry_dir("prune", key) / "model.json").read_text())
    assert model_json["dropped_blocks"] == blocks


DEPTHS_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from pipeline.training import distributed
    from pipeline.training.prune_arms import Arm, deeper_while_it_pays

    distributed.init()
    rank = distributed.rank()
    # Per depth: share removed, p50 in the search (the leader's, broadcast in the stage), p50 after the fine-tune,
    # validation after it. Rank 1 scores depth 1 lower than depth 0: alone it would stop there and keep depth 0.
    depths = [(0.6, 0.045, 0.049, 0.70), (0.3, 0.044, 0.045, 0.76 if rank == 0 else 0.60), (0.1, 0.04, 0.044, 0.74),
              (0.0, 0.03, 0.03, 0.80)]
    searched, finetuned = [], []

    def search(count):
        searched.append(count)
        return Arm([str(b) for b in range(count)], None, {"met": True, "predicted_ms": depths[count][1]},
                   depths[count][0])

    def finetune(arm):
        count = len(arm.dropped)
        finetuned.append(count)
        scores = {"validation_accuracy": depths[count][3], "test_accuracy": depths[count][3]}
        arm.steps = [{"after_finetune": scores, "macs": 1, "params": 1}]
        arm.search = {**arm.search, "achieved": {"latency_ms": depths[count][2], "format": "fp32"}}
        return arm

    _, chosen, stopped = deeper_while_it_pays(3, 0.05, 0.045, search, finetune)
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as out:
        json.dump({"searched": searched, "finetuned": finetuned, "chosen": chosen, "stopped": stopped}, out)
    distributed.finish()
    """
)


@pytest.mark.slow
def test_auto_depth_goes_as_deep_and_keeps_what_the_leader_decides_on_every_rank(tmp_path):
    """prune.drop_blocks auto: ranks that scored a depth apart still search, fine-tune and keep the same depths
    (a rank that stopped alone would leave the other waiting in its next collective)."""
    script = tmp_path / "depths.py"
    script.write_text(DEPTHS_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["searched"] == [0, 1, 2] and ranks[0]["chosen"] == 1 and "past the peak" in ranks[0]["stopped"]
