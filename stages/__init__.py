"""The stages, one file each, in the order they run, and the config rules that span several of them.

Each stage module defines: NAME, SECTION (its config section), VERSION (bump when its output for
the same inputs changes), INPUTS (upstream stage names), OUTPUTS (the files it writes), a frozen
`Params` dataclass and `run(params, inputs, out_dir) -> metrics`. A stage with inputs from outside
the pipeline also defines `fingerprint(params, state_dir) -> dict`, content hashes of those inputs
(source data files, a user's model code) that go into its cache key. A stage whose files depend on its params
(the teacher: a PyTorch model or an ONNX file) defines `outputs(params) -> tuple`, used instead of OUTPUTS.
"""

import dataclasses
from typing import Any

from pipeline.errors import ConfigError
from pipeline.models.depth import AUTO, built_in_droppable, too_few_blocks
from pipeline.reporting.gates import parse_latency_limit
from pipeline.search import prune_budget
from pipeline.training.recipes import model_label
from stages import bench, data, distill, export, prune, quantize, report, teacher

STAGES = (data, teacher, distill, prune, export, quantize, bench, report)
STAGE_NAMES = tuple(stage.NAME for stage in STAGES)
SECTIONS = {stage.SECTION: stage.Params for stage in STAGES}  # config section -> params dataclass


def resolve_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """The sections with the values one takes from another filled in, checked across each other."""
    resolved = follow_device_threads(sections)
    check_sections(resolved)
    return resolved


def follow_device_threads(sections: dict[str, Any]) -> dict[str, Any]:
    """`bench.threads: [N]` says the device gives the model N threads: a latency budget's search on the CPU
    (`prune.target_threads`) and the int8 variant search (`quantize.search_threads`), left null, time at N as well.

    Only where that search runs, so that no other stage's cache key changes. Several counts in bench.threads say
    no one count: the searches keep their own settings and the config check decides."""
    bench_threads = sections["bench"].threads
    if bench_threads is None or len(bench_threads) != 1:
        return sections
    (threads,) = bench_threads
    prune_params, quantize_params = sections["prune"], sections["quantize"]
    followed = dict(sections)
    if (
        prune_budget.has_budget(prune_params)
        and prune_params.target_provider == "cpu"
        and prune_params.target_threads is None
    ):
        followed["prune"] = dataclasses.replace(prune_params, target_threads=threads)
    if quantize_params.search and quantize_params.search_threads is None:
        followed["quantize"] = dataclasses.replace(quantize_params, search_threads=threads)
    return followed


def check_sections(sections: dict[str, Any]) -> None:
    """What one stage needs of another's settings: what the report gates on must have been measured by bench,
    and the searches' settings must fit what the other stages provide and measure."""
    signoff, bench_params = sections["signoff"], sections["bench"]
    if signoff.latency_batch not in bench_params.batch_sizes:
        raise ConfigError(
            f"signoff.latency_batch={signoff.latency_batch} is not measured: add it to bench.batch_sizes "
            f"(now {list(bench_params.batch_sizes)})"
        )
    if bench_params.settings_batch != signoff.latency_batch:
        raise ConfigError(
            f"bench.settings_batch={bench_params.settings_batch} must be where models are compared: set it to "
            f"signoff.latency_batch ({signoff.latency_batch})"
        )
    target = signoff.latency_target or bench_params.targets[0]
    if target not in bench_params.targets:
        raise ConfigError(
            f"signoff.latency_target={target!r} is not measured: add it to bench.targets (now "
            f"{list(bench_params.targets)})"
        )
    _check_search(sections)
    _check_depth(sections)
    _check_onnx_teacher(sections)
    for limit in signoff.latency_limits:
        provider, batch, _, _ = parse_latency_limit(limit)
        if batch not in bench_params.batch_sizes or provider not in bench_params.providers:
            raise ConfigError(
                f"signoff.latency_limits entry {limit!r} is not measured: bench.batch_sizes is "
                f"{list(bench_params.batch_sizes)} and bench.providers is {list(bench_params.providers)}"
            )


def _check_search(sections: dict[str, Any]) -> None:
    """The searches' settings against what the other stages provide and measure."""
    prune_params, bench_params, signoff = sections["prune"], sections["bench"], sections["signoff"]
    quantize_params = sections["quantize"]
    if quantize_params.search and quantize_params.search_device not in bench_params.targets:
        raise ConfigError(
            f"quantize.search_device={quantize_params.search_device!r} is not benchmarked: add it to bench.targets "
            f"(now {list(bench_params.targets)})"
        )
    compared_at, bench_threads = quantize_params.search_threads, bench_params.threads
    if quantize_params.search and None not in (compared_at, bench_threads) and compared_at not in bench_threads:
        raise ConfigError(
            f"quantize.search_threads={compared_at} compares the int8 variants at {compared_at} thread(s), which the "
            f"bench never times (bench.threads={list(bench_threads)}): set it to one of them, or null"
        )
    if not prune_budget.has_budget(prune_params):
        return
    target = signoff.latency_target or bench_params.targets[0]
    if prune_params.target_device != target:
        raise ConfigError(
            f"prune.target_device={prune_params.target_device!r} must be where the edge model is gated: set "
            f"signoff.latency_target={prune_params.target_device} (now {target})"
        )
    if (prune_params.target_batch, prune_params.target_provider) != (signoff.latency_batch, signoff.latency_provider):
        raise ConfigError(
            f"prune.target_batch={prune_params.target_batch} and prune.target_provider="
            f"{prune_params.target_provider!r} must be where the edge model is chosen: set "
            f"signoff.latency_batch={prune_params.target_batch} and signoff.latency_provider="
            f"{prune_params.target_provider} (now {signoff.latency_batch}, {signoff.latency_provider})"
        )
    if prune_params.target_provider not in bench_params.providers:
        raise ConfigError(
            f"prune.target_provider={prune_params.target_provider!r} is not measured: add it to bench.providers "
            f"(now {list(bench_params.providers)})"
        )
    threads = prune_params.target_threads
    speedup = prune_params.target_speedup_vs_teacher
    cpu = prune_params.target_provider == "cpu"
    # A device that runs one thread is said in bench.threads: searched at more, a candidate measures faster than the
    # bench will time it, and the budget fails at the sign-off after the prune stage has run.
    if cpu and bench_threads is not None and threads not in bench_threads:
        searched = "its own tuned settings, 1 thread up to every core" if threads is None else f"{threads} thread(s)"
        raise ConfigError(
            f"prune.target_threads={'null' if threads is None else threads} times the search's candidates at "
            f"{searched}, but the bench, which the sign-off gates on, times only bench.threads="
            f"{list(bench_threads)}: set prune.target_threads to one of them"
        )
    # Else the budget and its gate come from two timings of the teacher: with prune.target_threads=1 on a 2-core AMD
    # EPYC the prune stage timed it at 0.7807 ms, a budget of 0.1301 ms for a speed-up of 6, where the bench, tuning
    # over 1 and 2 threads, had timed it at 0.4260 ms: a gate of 0.0710 (BENCHMARKS.md).
    if cpu and speedup is not None and threads is not None and bench_threads != (threads,):
        now = "null: 1 up to each target's cores" if bench_threads is None else list(bench_threads)
        raise ConfigError(
            f"prune.target_threads={threads} times the teacher at {threads} thread(s) for the budget of "
            f"prune.target_speedup_vs_teacher={speedup:g}, but the sign-off gates on the bench's timing of it, "
            f"tuned over bench.threads (now {now}): set bench.threads=[{threads}] as well (the device runs "
            f"{threads} thread(s)), or prune.target_threads=null"
        )


def _check_depth(sections: dict[str, Any]) -> None:
    """prune.drop_blocks against the student distill builds: said before anything trains (the prune stage would
    find it only after the teacher and the student had)."""
    asked, distill = sections["prune"].drop_blocks, sections["distill"]
    if asked != AUTO and asked > len(droppable := built_in_droppable(distill.model, distill.width)):
        raise ConfigError(too_few_blocks(asked, model_label(distill.model, distill.width), droppable))


def _check_onnx_teacher(sections: dict[str, Any]) -> None:
    """Feature distillation reads the teacher's intermediate layers, which an ONNX teacher does not expose."""
    teacher, distill, prune = sections["teacher"], sections["distill"], sections["prune"]
    if teacher.onnx is None:
        return
    for key, kind in (("distill.feature_loss", distill.feature_loss), ("prune.feature_loss", prune.feature_loss)):
        if kind not in ("none", "distill"):  # prune's "distill" follows distill.feature_loss, checked first
            raise ConfigError(
                f"{key}={kind!r} needs the teacher's intermediate layers, which an ONNX teacher (teacher.onnx) does "
                f"not expose: set {key}=none"
            )
