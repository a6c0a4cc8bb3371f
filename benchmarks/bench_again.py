"""The bench stage of a cached run, run again with this checkout's code: the same models, data and bench config, a
fresh measurement. For comparing what a change to the measuring does on real models without training them again.

    python benchmarks/bench_again.py ARTIFACTS CONFIG OUT [--set section.key=value ...]

ARTIFACTS is an artifact store holding the data, export and quantize entries of CONFIG (with the overrides), as
`edgeforge status` keys them. bench.json and a summary go to OUT; the store is not written to.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.cache import ArtifactStore
from pipeline.runner import load_config, needed_stages, plan_keys
from stages import bench


def cached_input(store: ArtifactStore, stage: str, key: str):
    """The bench's input `stage` of this config, verified (runner.plan_keys computed its key)."""
    artifact = store.lookup(stage, key)
    if artifact is None:
        raise SystemExit(f"bench_again: {stage} {key[:12]} is not cached in {store.cache}: run `edgeforge run --until "
                         "quantize` with this config first")  # fmt: skip
    return artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    store = ArtifactStore(args.artifacts)
    config = load_config(args.config, args.overrides)
    keys = plan_keys(config, needed_stages("bench"), store)
    params = config.section("bench")
    inputs = {stage: cached_input(store, stage, keys[stage]) for stage in bench.INPUTS}
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
