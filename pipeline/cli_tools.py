"""`edgeforge` commands that read what a run wrote or measure a file a user brings: report, signoff, compare,
predict, bench. They parse arguments and call the libraries, nothing more; pipeline/cli.py adds them to the group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cache import ArtifactStore
from pipeline.errors import ConfigError, EdgeforgeError
from pipeline.reporting import compare, recheck
from pipeline.runner import section_classes
from pipeline.runtime import latency
from pipeline.runtime import predict as predictor
from pipeline.runtime.timing import parse_provider_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of text.")


@click.command()
@click.pass_obj
def report(store: ArtifactStore) -> None:
    """Print the latest sign-off report (ARTIFACTS/release/report.md); exit 1 if its sign-off failed."""
    release = store.root / "release"
    if not (release / "report.json").is_file():
        raise EdgeforgeError(f"no report in {release}: run `edgeforge run` first")
    click.echo((release / "report.md").read_text(), nl=False)
    if not json.loads((release / "report.json").read_text())["signoff"]["passed"]:
        raise EdgeforgeError("sign-off failed (see the Gates table above)")


@click.command()
@click.argument("report_file", metavar="[REPORT]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def signoff(store: ArtifactStore, report_file: Path | None) -> None:
    """Re-check a report's sign-off from its own numbers; exit 0 only if every gate passes.

    REPORT defaults to ARTIFACTS/release/report.json. The gates and the edge model are recomputed from the
    measured values and the report's signoff config; a stored verdict that disagrees is listed and fails.
    """
    report_file = report_file or store.root / "release" / "report.json"
    result = recheck.recheck_signoff(compare.load_report(report_file), section_classes()["signoff"], str(report_file))
    click.echo(recheck.format_recheck(result), nl=False)
    if not result["passed"] or result["mismatches"]:
        raise EdgeforgeError(f"sign-off of {report_file} does not pass")


@click.command(name="compare")
@click.argument("old_file", metavar="OLD.json", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new_file", metavar="NEW.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--accuracy-drop", default=0.005, show_default=True, help="Flag accuracy losses larger than this.")
@click.option(
    "--min-change",
    default=0.05,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Flag a latency only when it is this much worse (a fraction) and beyond the noise.",
)
@json_option
def compare_reports(old_file: Path, new_file: Path, accuracy_drop: float, min_change: float, as_json: bool) -> None:
    """Compare two report.json files per model and metric; exit 1 on a latency regression or accuracy drop.

    A latency counts as regressed when it is more than --min-change worse and beyond the noise: every new round
    slower than every old one (reports measured in rounds; older ones: disjoint p90 confidence intervals).
    """
    old, new = compare.load_report(old_file), compare.load_report(new_file)
    result = compare.compare(old, new, accuracy_drop=accuracy_drop, min_change=min_change)
    click.echo(json.dumps(result, indent=2) if as_json else compare.format_comparison(result), nl=not as_json)
    if result["regressions"]:
        raise EdgeforgeError(f"{len(result['regressions'])} regression(s) from {old_file} to {new_file}")


@click.command()
@click.argument("targets", nargs=-1, required=True, metavar="IMAGE|FOLDER...")
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1), help="Classes listed per image.")
@click.option(
    "--release",
    type=click.Path(file_okay=False, path_type=Path),
    help="A release folder (model.onnx, deploy.json). Default: ARTIFACTS/release.",
)
@json_option
@click.pass_obj
def predict(store: ArtifactStore, targets, top: int, release: Path | None, as_json: bool) -> None:
    """Classify image files (folders: every .jpg, .jpeg and .png in them) with the released edge model.

    The same code as release/predict.py: the shipped preprocessing and session settings. One line per image (its
    path and top classes with probabilities), or with --json one JSON object per line.
    """
    deploy = (release or store.root / "release") / "deploy.json"
    if not deploy.is_file():
        raise ConfigError(f"no deploy.json in {deploy.parent}: run `edgeforge run` first, or pass --release FOLDER")
    try:
        session, description = predictor.load(deploy)
        rows = predictor.predict(predictor.image_files(list(targets)), session, description, top)
    except (OSError, ValueError) as error:
        raise ConfigError(f"predict: {error}") from None
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{row['path']} " + " ".join(f"{c['class']} {c['probability']:.4f}" for c in row["top"]))


@click.command(name="bench")
@click.argument("model_file", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Full shape of an input, e.g. --shape input=1x3x224x224 (repeatable). Needed for symbolic dims "
    "other than the batch.",
)
@click.option(
    "--batch",
    "batch_sizes",
    multiple=True,
    type=int,
    help="Batch size for a symbolic first dim (repeatable). Default: the model's own batch, else 1.",
)
@click.option(
    "--threads",
    multiple=True,
    type=int,
    default=(1,),
    show_default=True,
    help="onnxruntime intra-op threads (repeatable); every combination gets its own session.",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    default=("cpu", "cuda", "tensorrt"),
    show_default=True,
    help="Execution providers (cpu, cuda, tensorrt, openvino, xnnpack, coreml, dml, qnn, ... or a full onnxruntime "
    "name); one that onnxruntime lacks is reported as skipped, never replaced by CPU.",
)
@click.option(
    "--provider-option",
    "provider_options",
    multiple=True,
    metavar="PROVIDER:KEY=VALUE",
    help="An execution provider's option (repeatable), e.g. openvino:device_type=CPU.",
)
@click.option(
    "--target",
    default="local",
    show_default=True,
    help="Where to measure: local, or a device over SSH, ssh://[user@]host[:port][?python=/path/to/python3] (it "
    "needs Python 3.10+, numpy and onnxruntime; ~/.ssh/config, keys and the agent apply).",
)
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one call to a --target device may take before the command fails.",
)
@click.option(
    "--sign-off",
    is_flag=True,
    help="MLPerf single-stream style: >= 1,024 timed runs and >= 60 s per combination over all rounds (default: "
    "a quick run of >= 200 runs and 2 s).",
)
@click.option(
    "--rounds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Interleaved rounds: every combination once per round in a fresh session; disturbed rounds are redone.",
)
@click.option(
    "--tune",
    is_flag=True,
    help="On the CPU, search the fastest session settings (threads 1..cores, spinning, graph optimization) at the "
    "first batch size instead of taking --threads. A winner of more than one thread is timed beside the fastest "
    "one-thread setting in the same rounds, and the one that ran faster over them is kept.",
)
@json_option
def bench_command(
    model_file: Path,
    shapes,
    batch_sizes,
    threads,
    providers,
    provider_options,
    target: str,
    timeout: float,
    sign_off: bool,
    rounds: int,
    tune: bool,
    as_json: bool,
) -> None:
    """Measure the latency of any ONNX file in onnxruntime: p50/p90/p95/p99, the 95% confidence intervals of the
    p90, p95 and p99, mean, std, throughput and the spread between rounds per provider, session settings and batch
    size.

    Inputs are fixed random tensors of the model's input signature (seeded).
    """
    # Imported here, not at the top: onnx takes half a second to import, and no other command needs it at start.
    from pipeline.runtime import benchtool, feeds

    parsed = dict(feeds.parse_shape(text) for text in shapes)
    total = latency.SIGN_OFF if sign_off else latency.QUICK
    preset = latency.per_round(total, rounds)
    result = benchtool.bench_file(
        model_file,
        parsed,
        tuple(batch_sizes),
        tuple(threads),
        tuple(providers),
        preset,
        rounds=rounds,
        tune=tune,
        target=target,
        provider_options=parse_provider_options(tuple(provider_options)),
        timeout=timeout,
    )
    click.echo(json.dumps(result, indent=2) if as_json else benchtool.format_table(result))
