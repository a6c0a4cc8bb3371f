"""Runs the stages in order, reusing verified cache entries and publishing new ones atomically."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.cache import CHECKPOINTS, Artifact, ArtifactStore, library_versions, stage_key
from pipeline.config import Config, params_to_dict
from pipeline.errors import ConfigError, SignoffFailed, StageError
from stages import STAGE_NAMES, STAGES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageResult:
    name: str
    key: str
    cached: bool
    seconds: float
    artifact: Artifact


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
) -> list[StageResult]:
    """Run `target` and what it needs. `force` names stages to re-run (with their downstream), or 'all'.
    `wait=False` fails at once when another process is running a stage this run needs."""
    get_stage(target)
    for name in force:
        if name != "all":
            get_stage(name)
    forced = set(STAGE_NAMES) if "all" in force else downstream_of(set(force))
    stages = needed_stages(target)
    plan = _plan(config, stages, store)
    for leftover in store.sweep():
        log.info("removed %s, left behind by a run that died", leftover)
    artifacts: dict[str, Artifact] = {}
    results = []
    for stage in stages:
        key, external = plan[stage.NAME]
        started = time.perf_counter()
        reuse = stage.NAME not in forced
        artifact = store.lookup(stage.NAME, key) if reuse else None
        cached = artifact is not None
        if artifact is None:
            with store.locked(stage.NAME, key, wait):
                # Another process may have published this key while we waited for the lock.
                artifact = store.lookup(stage.NAME, key) if reuse else None
                cached = artifact is not None
                if artifact is None:
                    upstream = {name: artifacts[name] for name in stage.INPUTS}
                    artifact = run_stage(stage, config, store, key, upstream, external)
        seconds = time.perf_counter() - started
        store.record_latest(stage.NAME, key)
        artifacts[stage.NAME] = artifact
        results.append(StageResult(stage.NAME, key, cached, seconds, artifact))
        state = "cached" if cached else f"ran in {seconds:.1f}s"
        log.info("%s: %s (%s) %s", stage.NAME, state, key[:12], artifact.metrics.get("summary", ""))
    return results


def run_stage(
    stage: ModuleType, config: Config, store: ArtifactStore, key: str, inputs: dict[str, Artifact], external: dict
) -> Artifact:
    """Run one stage into a temp directory and publish it; on any failure publish nothing."""
    params = config.section(stage.SECTION)
    temp_dir = store.temp_dir(stage.NAME, key)
    try:
        started = time.perf_counter()
        metrics = stage.run(params, inputs, temp_dir)
        seconds = time.perf_counter() - started
        written = sorted(
            p.relative_to(temp_dir).as_posix()
            for p in temp_dir.rglob("*")
            if p.is_file() and p.relative_to(temp_dir).parts[0] != CHECKPOINTS
        )
        if written != sorted(stage.OUTPUTS):
            raise StageError(f"{stage.NAME}: wrote {written}, but declares {sorted(stage.OUTPUTS)}")
        manifest = {
            "version": stage.VERSION,
            "section": stage.SECTION,
            "params": params_to_dict(params),
            "upstream": {name: artifact.key for name, artifact in inputs.items()},
            "external": external,
            "config": config.to_dict(),
            "versions": library_versions(),
            "metrics": metrics,
            "seconds": seconds,
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
        raise SignoffFailed(f"sign-off failed: {names} (see release/report.md)")


def stage_status(config: Config, store: ArtifactStore) -> list[dict[str, Any]]:
    """Each stage: its key and whether a verified entry for it is in the cache."""
    keys = plan_keys(config, list(STAGES), store)
    return [{"name": name, "key": key, "cached": store.lookup(name, key) is not None} for name, key in keys.items()]
