"""The `edgeforge` command: parses arguments and calls the runner, nothing more."""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path

import click

from pipeline import cli_tools, runner
from pipeline.cache import ArtifactStore
from pipeline.cli_tools import json_option
from pipeline.errors import EdgeforgeError
from pipeline.runner import load_config
from pipeline.search import teacher_budget
from pipeline.search.student_floor import format_floors
from pipeline.training import distributed
from stages import STAGE_NAMES

log = logging.getLogger("edgeforge")
STORAGE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT)  # the disk, not a bug


class Group(click.Group):
    """Turns expected failures into one line on stderr and their exit code (a traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeforgeError as error:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)
        except OSError as error:
            if error.errno not in STORAGE_ERRORS or ctx.params.get("debug"):
                raise
            click.echo(
                f"error: cannot write {error.filename or 'the artifacts directory'}: {error.strerror}; free space or "
                "pass --artifacts DIR on a writable disk (nothing half-written was published; earlier artifacts "
                "are intact)",
                err=True,
            )
            ctx.exit(1)
        except RuntimeError as error:
            if distributed.world_size() == 1 or ctx.params.get("debug"):
                raise
            # A collective failed: another rank died (its own error is printed) and took this stage down.
            click.echo(f"error: rank {distributed.rank()}: {str(error).splitlines()[0]}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: the running stage published nothing; cached stages are intact", err=True)
            ctx.exit(130)


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config (sections: data, teacher, distill, prune, export, quantize, bench, signoff). "
    "Without it, the built-in defaults, the same as configs/default.yaml.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config value, e.g. --set prune.ratio=0.5 (repeatable; applied after --config).",
)
force_option = click.option(
    "--force",
    multiple=True,
    metavar="STAGE|all",
    help="Re-run STAGE and every stage after it that depends on it, even if cached (repeatable).",
)

nproc_option = click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train data-parallel with N processes on this machine (launches torchrun; gloo on CPU, NCCL on "
    "GPUs). Ignored when already started by torchrun. See README, Scaling out.",
)
no_wait_option = click.option(
    "--no-wait", is_flag=True, help="Fail at once if another edgeforge process is running a stage this run needs."
)
skip_floor_check_option = click.option(
    "--skip-floor-check",
    is_flag=True,
    help="Train (or, distilled already, prune) the student even when prune.target_latency_ms (or the teacher's "
    "fastest timing over prune.target_speedup_vs_teacher) is under its floor of pruning (by default the run times "
    "the untrained student at its floor, and unpruned if that misses, before training or pruning it, and fails if "
    "every round is over the budget, unless one of prune.alternatives measures within it whole).",
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    envvar="EDGEFORGE_ARTIFACTS",
    help="Artifacts directory (cache/ and release/), relative to the working directory.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also log each training epoch on a terminal (a log file or a pipe always gets them).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for expected errors too.")
@click.pass_context
def cli(ctx: click.Context, artifacts: Path, verbose: bool, debug: bool) -> None:
    """Compress a model for the edge: data, teacher, distill, prune, export, quantize, bench, report.

    Each stage's output is cached under ARTIFACTS/cache/<stage>/<key>/; the edge model and the
    sign-off report land in ARTIFACTS/release/. Start with `edgeforge run`.
    """
    # Libraries log progress at INFO (onnxscript's optimizer, the exporter); show only their warnings.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    level = logging.DEBUG if verbose else logging.INFO
    for ours in ("pipeline", "stages", "edgeforge"):
        # Under torchrun every rank would log the same lines: only the leader does.
        logging.getLogger(ours).setLevel(level if distributed.is_leader() else logging.WARNING)
    ctx.obj = ArtifactStore(artifacts)


def _execute(
    store: ArtifactStore,
    config_file,
    overrides,
    target: str,
    force,
    as_json: bool,
    no_wait: bool,
    nproc: int,
    skip_floor_check: bool,
) -> None:
    config = load_config(config_file, overrides)  # bad input fails here, before any rank starts
    if nproc > 1 and distributed.world_size() == 1:
        distributed.launch(nproc, sys.argv[1:])  # each rank runs this same command line under torchrun
        return
    distributed.init()
    try:
        results = runner.run_pipeline(
            config, store, target=target, force=tuple(force), wait=not no_wait, check_floor=not skip_floor_check
        )
    finally:
        distributed.finish()
    if not distributed.is_leader():
        return  # the leader publishes the release and reports
    release = None
    if results[-1].name == "report":
        release = runner.publish_release(store, results[-1].artifact)
    if as_json:
        summary = {
            "stages": [
                {"name": r.name, "key": r.key, "cached": r.cached, "seconds": round(r.seconds, 3)} for r in results
            ],
            "release": str(release) if release else None,
        }
        if release:
            summary["edge_model"] = results[-1].artifact.metrics["edge_model"]
            summary["signoff_passed"] = results[-1].artifact.metrics["signoff_passed"]
        click.echo(json.dumps(summary, indent=2))
    elif release:
        click.echo(f"edge model: {release / 'model.onnx'}\nreport:     {release / 'report.md'}")
    if release:
        runner.check_signoff(results[-1].artifact)


@cli.command()
@config_option
@set_option
@click.option(
    "--until", type=click.Choice(STAGE_NAMES), default=STAGE_NAMES[-1], show_default=True, help="Stop after this stage."
)
@force_option
@nproc_option
@no_wait_option
@skip_floor_check_option
@json_option
@click.pass_obj
def run(store: ArtifactStore, config_file, overrides, until, force, nproc, no_wait, skip_floor_check, as_json) -> None:
    """Run every stage (up to --until), reusing cached ones.

    Exits 0 when the sign-off passes, 1 when a gate fails (after writing the report) or a stage
    fails, 2 for bad input.
    """
    _execute(store, config_file, overrides, until, force, as_json, no_wait, nproc, skip_floor_check)


@cli.command()
@click.argument("name", metavar="NAME")
@config_option
@set_option
@force_option
@nproc_option
@no_wait_option
@skip_floor_check_option
@json_option
@click.pass_obj
def stage(store: ArtifactStore, name, config_file, overrides, force, nproc, no_wait, skip_floor_check, as_json) -> None:
    """Run stage NAME and whatever it needs upstream (cached stages are reused).

    NAME is one of: data, teacher, distill, prune, export, quantize, bench, report.
    """
    runner.get_stage(name)
    _execute(store, config_file, overrides, name, force, as_json, no_wait, nproc, skip_floor_check)


@cli.command()
@config_option
@set_option
@json_option
@click.pass_obj
def status(store: ArtifactStore, config_file, overrides, as_json) -> None:
    """Show each stage's cache key and whether it is cached or stale for this config."""
    rows = runner.stage_status(load_config(config_file, overrides), store)
    if as_json:
        click.echo(json.dumps({"stages": rows}, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<9} {'cached' if row['cached'] else 'stale':<7} {row['key'][:12]}")


@cli.command()
@config_option
@set_option
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME[@WIDTH]",
    help="Also measure this student (repeatable); when none is given, prune.alternatives at each width the prune "
    "stage may time them (auto: the student's stride-2 variant at 2x to 0.5x its width).",
)
@json_option
@click.pass_obj
def floor(store: ArtifactStore, config_file, overrides, models, as_json) -> None:
    """How fast could the student run on the target? Measured in a few minutes, before anything trains.

    Builds the student (distill.model, distill.width), each --model (none given: prune.alternatives at each width
    the prune stage may time them) and the teacher with untrained weights (weights do not change latency), for the
    data stage's images. Each is exported and timed unpruned and at its floor (every
    prunable group at its fewest channels under prune.round_to) as the prune search times its candidates
    (prune.target_device, target_provider, target_batch, target_format), in prune.search_repeats interleaved
    rounds. With prune.drop_blocks N, each student without its first N droppable residual blocks (auto with a
    budget: whole and without all of them). Exits 1 when prune.target_latency_ms is set and every round of the student,
    unpruned and at its floor, is over it (less prune.search_margin): that student meets the budget neither unpruned
    nor at its floor. With prune.target_speedup_vs_teacher the budget is the teacher's fastest timing over it, the
    teacher timed untrained in fp32 as the prune stage times it trained (an ONNX teacher: the teacher stage's file).
    """
    result = runner.student_floors(load_config(config_file, overrides), store, models)
    click.echo(json.dumps(result, indent=2) if as_json else format_floors(result), nl=False)
    if result["verdict"] is not None and not result["verdict"]["reachable"]:
        source = teacher_budget.summary(result["budget_from_teacher"])
        raise EdgeforgeError(
            f"{source}prune.target_latency_ms={result['budget_ms']:.4g}: {result['verdict']['message']}"
        )


@cli.command()
@click.pass_obj
def verify(store: ArtifactStore) -> None:
    """Re-hash every cached artifact against its manifest; exit 1 and list each problem if any.

    A damaged entry is also found (and rebuilt) by the next run that needs it.
    """
    checked, problems = store.verify()
    for problem in problems:
        click.echo(problem)
    if problems:
        raise EdgeforgeError(f"{len(problems)} of {checked} cached artifacts failed verification")
    click.echo(f"{checked} cached artifacts verified")


@cli.command()
@click.option("--keep-latest", is_flag=True, help="Keep the entry of each stage that the latest run used.")
@click.pass_obj
def clean(store: ArtifactStore, keep_latest: bool) -> None:
    """Delete ARTIFACTS/cache and ARTIFACTS/release (every cached stage and the release).

    With --keep-latest, delete only the cache entries (and leftover work directories) that the latest run of
    each stage did not use; entries a running process holds are left alone.
    """
    removed = store.clean_keep_latest() if keep_latest else store.clean()
    click.echo("\n".join(f"removed {p}" for p in removed) if removed else "nothing to remove")


for command in (
    cli_tools.report,
    cli_tools.signoff,
    cli_tools.compare_reports,
    cli_tools.predict,
    cli_tools.bench_command,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="edgeforge")


if __name__ == "__main__":  # how torchrun starts each rank: python -m pipeline.cli
    main()
