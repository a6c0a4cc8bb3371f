"""Runs the stages in order, reusing verified cache entries and publishing new ones atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline import config as configuration
from pipeline.cache import CHECKPOINTS, Artifact, ArtifactStore, library_versions, stage_key
from pipeline.config import Config, params_to_dict
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import ConfigError, SignoffFailed, StageError
from pipeline.search import student_floor, teacher_budget
from pipeline.search.floor_check import check_student_floor
from pipeline.training import distributed
from stages import SECTIONS, STAGE_NAMES, STAGES, resolve_sections

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    cached: bool
    seconds: float
    artifact: Artifact


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The stages' config: their dataclass defaults, then the YAML file at `path`, then `section.key=value`
    overrides, checked within each section and across them, with the values one section follows from another."""
    return configuration.load_config(SECTIONS, path, overrides, resolve_sections)


def section_classes() -> dict[str, type]:
    """Config section -> the params dataclass of the stage that owns it."""
    return dict(SECTIONS)


def get_stage(name: str) -> ModuleType:
    for stage in STAGES:
        if stage.NAME == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")


def needed_stages(target: str) -> list[ModuleType]:
    """`target` and every stage it depends on, in pipeline order."""
    needed = {target}
    for stage in reversed(STAGES):
        if stage.NAME in needed:
            needed.update(stage.INPUTS)
    return [stage for stage in STAGES if stage.NAME in needed]


def downstream_of(names: set[str]) -> set[str]:
    """`names` and every stage that depends on one of them."""
    affected = set(names)
    for stage in STAGES:
        if affected.intersection(stage.INPUTS):
            affected.add(stage.NAME)
    return affected


def plan_keys(config: Config, stages: list[ModuleType], store: ArtifactStore) -> dict[str, str]:
    """Every stage's cache key, computed from config and upstream keys without running anything."""
    return {name: key for name, (key, _) in _plan(config, stages, store).items()}


def _plan(config: Config, stages: list[ModuleType], store: ArtifactStore) -> dict[str, tuple[str, dict]]:
    """Each stage's key and external inputs (content hashes of source data or user code)."""
    versions = library_versions()
    plan: dict[str, tuple[str, dict]] = {}
    for stage in stages:
        params = config.section(stage.SECTION)
        external = stage.fingerprint(params, store.cache) if hasattr(stage, "fingerprint") else {}
        upstream = {name: plan[name][0] for name in stage.INPUTS}
        key = stage_key(stage.NAME, stage.VERSION, params_to_dict(params), upstream, external, versions)
        plan[stage.NAME] = (key, external)
    return plan


def run_pipeline(
    config: Config,
    store: ArtifactStore,
    target: str = STAGE_NAMES[-1],
    force: tuple[str, ...] = (),
    wait: bool = True,
    check_floor: bool = True,
) -> list[StageResult]:
    """Run `target` and what it needs. `force` names stages to re-run (with their downstream), or 'all'.
    `wait=False` fails at once when another process is running a stage this run needs. `check_floor`: before
    training a student for a latency budget, check that its floor can reach it (check_student_floor)."""
    get_stage(target)
    for name in force:
        if name != "all":
            get_stage(name)
    forced = set(STAGE_NAMES) if "all" in force else downstream_of(set(force))
    stages = needed_stages(target)
    leader = distributed.is_leader()
    # Only the leader plans (it may download and hash the source data); every rank uses its keys.
    plan = distributed.broadcast_json(_plan(config, stages, store) if leader else None)
    # The other ranks only help train: they follow up to the last training stage; the rest is the leader's alone.
    last_training = max((i for i, stage in enumerate(stages) if stage.TRAINS), default=-1)
    followed = {stage.NAME for stage in stages[: last_training + 1]} if distributed.active() else set()
    if not leader:
        stages = stages[: last_training + 1]
    else:
        for leftover in store.sweep():
            log.info("removed %s, left behind by a run that died", leftover)
    artifacts: dict[str, Artifact] = {}
    results = []
    for stage in stages:
        key, external = plan[stage.NAME]
        if leader and check_floor and stage.TRAINS:  # once, before the first training stage it can be checked at
            check_floor = not check_student_floor(config, store, plan, artifacts, forced)
        started = time.perf_counter()
        reuse = stage.NAME not in forced
        upstream = {name: artifacts[name] for name in stage.INPUTS}
        if leader:
            followers = stage.NAME in followed
            artifact, cached = _lead_stage(stage, config, store, key, upstream, external, reuse, wait, followers)
        else:
            artifact, cached = _follow_stage(stage, config, store, key, upstream)
        seconds = time.perf_counter() - started
        artifacts[stage.NAME] = artifact
        results.append(StageResult(stage.NAME, key, cached, seconds, artifact))
        if leader:
            store.record_latest(stage.NAME, key)
            state = "cached" if cached else f"ran in {seconds:.1f}s"
            log.info("%s: %s (%s) %s", stage.NAME, state, key[:12], artifact.metrics.get("summary", ""))
    return results


def _lead_stage(
    stage: ModuleType,
    config: Config,
    store: ArtifactStore,
    key: str,
    upstream: dict[str, Artifact],
    external: dict,
    reuse: bool,
    wait: bool,
    followers: bool,
) -> tuple[Artifact, bool]:
    """Reuse the stage's verified entry or run it: a single process, or the leader of several ranks, which
    tells the `followers` (when they take part in this stage) what it decided and when it has published."""

    def tell(decision: str) -> None:
        if followers:
            distributed.broadcast_json(decision)

    artifact = store.lookup(stage.NAME, key) if reuse else None
    if artifact is not None:
        tell("cached")
        return artifact, True
    with store.locked(stage.NAME, key, wait):
        # Another process may have published this key while we waited for the lock.
        artifact = store.lookup(stage.NAME, key) if reuse else None
        tell("cached" if artifact else "run")
        if artifact is not None:
            return artifact, True
        artifact = run_stage(stage, config, store, key, upstream, external)
    if followers:
        distributed.barrier()  # published: the other ranks may read it
    return artifact, False


def _follow_stage(
    stage: ModuleType, config: Config, store: ArtifactStore, key: str, upstream: dict[str, Artifact]
) -> tuple[Artifact, bool]:
    """A rank other than the leader: train along if the leader runs a training stage, then read its entry."""
    decision = distributed.broadcast_json(None)
    if decision == "run":
        if stage.TRAINS:
            with tempfile.TemporaryDirectory(prefix=f"edgeforge-rank{distributed.rank()}-") as scratch:
                stage.run(config.section(stage.SECTION), upstream, Path(scratch))  # its files are the leader's
            distributed.barrier()  # this rank finished: the leader may publish
        distributed.barrier()  # the leader published
    artifact = store.lookup(stage.NAME, key)
    if artifact is None:
        raise StageError(
            f"rank {distributed.rank()}: {stage.NAME} entry {key[:12]} is missing in {store.cache} after the leader "
            "published it; with several machines, --artifacts must be a directory every node shares"
        )
    return artifact, decision == "cached"


def run_stage(
    stage: ModuleType, config: Config, store: ArtifactStore, key: str, inputs: dict[str, Artifact], external: dict
) -> Artifact:
    """Run one stage into a temp directory and publish it; on any failure publish nothing."""
    params = config.section(stage.SECTION)
    temp_dir = store.temp_dir(stage.NAME, key)
    try:
        started = time.perf_counter()
        # A stage that does not train runs on the leader alone: whatever it trains (the quantize stage's QAT) must
        # not wait for ranks that never join it.
        with contextlib.nullcontext() if stage.TRAINS else distributed.alone():
            metrics = stage.run(params, inputs, temp_dir)
        seconds = time.perf_counter() - started
        if stage.TRAINS:
            distributed.barrier()  # every rank finished training: a rank that failed fails this, publishing nothing
        written = sorted(
            p.relative_to(temp_dir).as_posix()
            for p in temp_dir.rglob("*")
            if p.is_file() and p.relative_to(temp_dir).parts[0] != CHECKPOINTS
        )
        declared = sorted(stage.outputs(params) if hasattr(stage, "outputs") else stage.OUTPUTS)
        if written != declared:
            raise StageError(f"{stage.NAME}: wrote {written}, but declares {declared}")
        manifest = {
            "version": stage.VERSION,
            "section": stage.SECTION,
            "params": params_to_dict(params),
            "defaults": params_to_dict(type(params)()),  # what the report's reproduce command leaves out
            "upstream": {name: artifact.key for name, artifact in inputs.items()},
            "external": external,
            "config": config.to_dict(),
            "versions": library_versions(),
            "metrics": metrics,
            "seconds": seconds,
            "ranks": distributed.share()[1],  # processes that trained it (not in the key: same recipe, same model)
        }
        return store.publish(stage.NAME, key, temp_dir, manifest)
    except BaseException:
        store.discard(temp_dir)
        raise


def publish_release(store: ArtifactStore, report: Artifact) -> Path:
    """Copy the report stage's verified files to `<artifacts>/release/`, replacing the old release whole."""
    release = store.root / "release"
    staging = store.root / f".release-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for name in report.manifest["files"]:
            shutil.copyfile(report.file(name), staging / name)
        with store.locked("release", "release"):  # two runs finishing at once must not interleave the swap
            old = store.root / f".release-old-{uuid.uuid4().hex[:8]}"
            if release.exists():
                os.rename(release, old)
            os.rename(staging, release)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return release


def check_signoff(report: Artifact) -> None:
    failed = report.metrics["failed_gates"]
    if not report.metrics["signoff_passed"]:
        names = ", ".join(failed) if failed else "no model passed the accuracy gates"
        closest = report.metrics["closest_to_passing"]
        closest = f"; closest to passing: {closest}" if closest else ""
        hint = f"; {report.metrics['budget_hint']}" if report.metrics["budget_hint"] else ""
        raise SignoffFailed(f"sign-off failed: {names}{closest}{hint} (see release/report.md)")


def stage_status(config: Config, store: ArtifactStore) -> list[dict[str, Any]]:
    """Each stage: its key and whether a verified entry for it is in the cache."""
    keys = plan_keys(config, list(STAGES), store)
    return [{"name": name, "key": key, "cached": store.lookup(name, key) is not None} for name, key in keys.items()]


def student_floors(config: Config, store: ArtifactStore, models: Sequence[str] = ()) -> dict[str, Any]:
    """`edgeforge floor`: the data stage (reused or run: the models are built for its images), then how fast the
    student could run on the prune stage's target, unpruned and at its floor, before anything trains."""
    teacher, distill, prune = (config.section(name) for name in ("teacher", "distill", "prune"))
    # A bad --model fails before the data stage.
    measured = student_floor.students(teacher, distill, prune, tuple(models))
    dataset = load_dataset(run_pipeline(config, store, target="data")[-1].artifact)
    from_teacher = None  # prune.target_speedup_vs_teacher: the budget from the teacher, timed here
    if prune.target_speedup_vs_teacher is not None and teacher.onnx is None:
        from_teacher = teacher_budget.untrained(teacher, dataset, prune)
    elif prune.target_speedup_vs_teacher is not None:  # the teacher stage's file: a wrap of the user's, no training
        teacher_dir = run_pipeline(config, store, target="teacher")[-1].artifact.path
        from_teacher = teacher_budget.of_artifact(teacher_dir, dataset, prune)
    result = student_floor.measure(dataset, measured, teacher_budget.resolved(prune, from_teacher))
    return {**result, "budget_from_teacher": from_teacher}
