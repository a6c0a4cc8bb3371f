"""The bench stage of a cached run, run again with this checkout's code: the same models, data and bench config, a
fresh measurement. For comparing what a change to the measuring does on real models without training them again.

    python benchmarks/bench_again.py ARTIFACTS CONFIG OUT [--set section.key=value ...]

ARTIFACTS is an artifact store holding one run's data, export and quantize entries (the newest of each is used), CONFIG
the config that run used. bench.json and a summary go to OUT; the store is not written to.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config
from stages import bench


def newest(store: ArtifactStore, stage: str):
    entries = sorted((store.cache / stage).glob("[0-9a-f]*"), key=lambda path: path.stat().st_mtime)
    if not entries:
        raise SystemExit(f"bench_again: no {stage} entry in {store.cache}: run the pipeline up to quantize first")
    artifact = store.lookup(stage, entries[-1].name)
    if artifact is None:
        raise SystemExit(f"bench_again: the {stage} entry {entries[-1].name[:12]} does not verify")
    return artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    store = ArtifactStore(args.artifacts)
    params = load_config(args.config, args.overrides).section("bench")
    inputs = {stage: newest(store, stage) for stage in bench.INPUTS}
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = bench.run(params, inputs, args.out)
    print(result["summary"])
    for model in result["models"]:
        check = model["settings_check"]
        said = "not checked" if check is None else json.dumps(check)
        print(f"{model['name']}: {model['settings_label']}; check: {said}")
    print(f"bench_again: {time.monotonic() - started:.0f} s; inputs {[a.key[:12] for a in inputs.values()]}")


if __name__ == "__main__":
    main()
