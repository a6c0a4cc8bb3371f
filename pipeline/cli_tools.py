"""`edgeforge` commands that read what a run wrote or measure a file a user brings: report, signoff, compare,
bench. They parse arguments and call the libraries, nothing more; pipeline/cli.py adds them to the group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cache import ArtifactStore
from pipeline.errors import EdgeforgeError
from pipeline.reporting import compare, recheck
from pipeline.runtime import latency
from stages import report as report_stage

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
    result = recheck.recheck_signoff(compare.load_report(report_file), report_stage.Params, str(report_file))
    click.echo(recheck.format_recheck(result), nl=False)
    if not result["passed"] or result["mismatches"]:
        raise EdgeforgeError(f"sign-off of {report_file} does not pass")


@click.command(name="compare")
@click.argument("old_file", metavar="OLD.json", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new_file", metavar="NEW.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--accuracy-drop", default=0.005, show_default=True, help="Flag accuracy losses larger than this.")
@json_option
def compare_reports(old_file: Path, new_file: Path, accuracy_drop: float, as_json: bool) -> None:
    """Compare two report.json files per model and metric; exit 1 on a latency regression or accuracy drop.

    A p90 latency counts as regressed when the new confidence interval lies wholly above the old one (5% worse
    when a report has no intervals).
    """
    result = compare.compare(compare.load_report(old_file), compare.load_report(new_file), accuracy_drop=accuracy_drop)
    click.echo(json.dumps(result, indent=2) if as_json else compare.format_comparison(result), nl=not as_json)
    if result["regressions"]:
        raise EdgeforgeError(f"{len(result['regressions'])} regression(s) from {old_file} to {new_file}")


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
    type=click.Choice(["cpu", "cuda", "tensorrt"]),
    default=("cpu", "cuda", "tensorrt"),
    show_default=True,
    help="Execution providers; one that onnxruntime lacks is reported as skipped, never replaced by CPU.",
)
@click.option(
    "--sign-off",
    is_flag=True,
    help="MLPerf single-stream style: >= 1,024 timed runs and >= 60 s per combination (default: a quick "
    "run of >= 200 runs and 2 s).",
)
@json_option
def bench_command(model_file: Path, shapes, batch_sizes, threads, providers, sign_off: bool, as_json: bool) -> None:
    """Measure the latency of any ONNX file in onnxruntime: p50/p90/p95/p99, p90 confidence interval,
    mean, std and throughput per provider, thread count and batch size.

    Inputs are fixed random tensors of the model's input signature (seeded).
    """
    # Imported here, not at the top: onnx takes half a second to import, and no other command needs it at start.
    from pipeline.runtime import benchtool, feeds

    parsed = dict(feeds.parse_shape(text) for text in shapes)
    preset = latency.SIGN_OFF if sign_off else latency.QUICK
    result = benchtool.bench_file(model_file, parsed, tuple(batch_sizes), tuple(threads), tuple(providers), preset)
    click.echo(json.dumps(result, indent=2) if as_json else benchtool.format_table(result))
