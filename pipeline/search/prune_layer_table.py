"""The per-layer search's latency table: measured once per machine with prune_candidates.Candidates, then cached.

The table holds, for each prunable group and each of its candidate channel counts, the p50 of the deployed model
(prune_candidates: exported, quantized when int8 may ship, timed at its tuned settings on prune.target_device) with
only that group at that count; every group's full count holds the full model's p50. It depends on the measuring
machine, the student's architecture and input size, the candidate counts and the timing method, and not on the
budget: it is kept under the prune stage's cache folder (TABLES), in a file named by the sha256 of those, so a
rerun with another budget, or a retrained student of the same architecture, reuses it. A file that does not parse
is reported, removed and measured again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.cache import canonical_json, library_versions
from pipeline.models.group_pruning import group_importance
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import architecture
from pipeline.runtime import targets
from pipeline.search.prune_candidates import Candidates, SearchClock, method, reaching, repeated
from pipeline.search.prune_layers import LATENCY_MODELS, Group, Table, candidate_counts, magnitude_cost, search_layers
from pipeline.search.prune_sampled import search_sampled
from pipeline.search.prune_scores import ValidationScores

log = logging.getLogger(__name__)

TABLES = ".latency-tables"  # beside the prune stage's entries; dot-named, so the cache's verify passes it by


def prunable_groups(student: nn.Module, spec: ModelSpec, params: Any) -> list[Group]:
    """The student's groups, each with its candidate counts and its channels' importance, ascending."""
    importance = group_importance(student, spec.example_input(), spec.num_classes, params)
    groups = [Group(name, candidate_counts(len(s), params.round_to), tuple(s)) for name, s in importance.items()]
    return [g for g in groups if len(g.counts) > 1]  # a group already at its floor has nothing to offer


def table_key(student: nn.Module, spec: ModelSpec, groups: list[Group], params: Any) -> dict[str, Any]:
    """Everything a table's latencies depend on."""
    return {
        "machine": targets.identity(params.target_device, targets.TIMEOUT_S),
        "spec": dataclasses.asdict(spec),
        "architecture": architecture(student),
        "counts": {g.name: list(g.counts) for g in groups},
        "method": method(params),  # the entries are measured once each, whatever prune.search_repeats says
        "libraries": library_versions(),
    }


def measure_table(candidates: Candidates, groups: list[Group]) -> Table:
    """One measurement of the full model, then one per group and count below full, only that group pruned."""
    total = 1 + sum(len(g.counts) - 1 for g in groups)
    log.info("prune: measuring a per-layer latency table of %d candidates (once per machine and architecture)", total)
    full_ms = candidates({})["latency_ms"]
    table: Table = {}
    for group in groups:
        table[group.name] = {group.channels: full_ms}
        for count in group.counts[1:]:
            table[group.name][count] = candidates({group.name: count})["latency_ms"]
        log.info("prune: table of %s: %s", group.name, {c: round(ms, 5) for c, ms in table[group.name].items()})
    return table


def cached_table(candidates: Candidates, groups: list[Group], key: dict[str, Any], folder: Path) -> tuple[Table, bool]:
    """(the table, whether it came from the cache)."""
    path = folder / f"{hashlib.sha256(canonical_json(key).encode()).hexdigest()}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            return {g: {int(c): float(ms) for c, ms in row.items()} for g, row in saved["table"].items()}, True
        except (OSError, ValueError, KeyError, AttributeError) as error:
            log.warning("prune: cached latency table %s is unreadable (%s); removing it, measuring again", path, error)
            path.unlink(missing_ok=True)
    table = measure_table(candidates, groups)
    folder.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".tmp-{os.getpid()}")
    temp.write_text(json.dumps({"key": key, "table": table}, indent=1))
    os.replace(temp, path)
    return table, False


def search(
    candidates: Candidates,
    student: nn.Module,
    spec: ModelSpec,
    params: Any,
    folder: Path,
    scores: ValidationScores | None = None,
) -> dict[str, Any]:
    """The per-layer decision for `params.target_latency_ms`, with the method and the table's provenance.
    `prune.search: per_layer` takes greedy steps costed by what `scores` says they lose on validation, or (None) by
    the importance of the channels they remove; `sampled` (which needs `scores`) ranks whole configurations on
    validation (prune_sampled.py)."""
    groups = prunable_groups(student, spec, params)
    started = time.monotonic()
    table, cached = cached_table(candidates, groups, table_key(student, spec, groups, params), folder)
    table_seconds = time.monotonic() - started
    # The table's entries are measured once each; a configuration near the limit, again while over it
    clock = SearchClock()  # prune.search_budget_s counts measuring, not the waits between timings taken again
    measure = reaching(repeated(candidates, params.search_repeats), params, clock)
    limits = dict(
        budget_ms=params.target_latency_ms,
        margin=params.search_margin,
        time_budget_s=params.search_budget_s,
        clock=clock,
    )
    model = LATENCY_MODELS[params.search_latency_model]
    if params.search == "sampled":
        if scores is None:
            raise ValueError("prune.search=sampled ranks configurations on validation: it needs the scores")
        samples = params.search_samples
        decision = search_sampled(groups, table, measure, scores, **limits, samples=samples, seed=params.seed,
                                  refine=params.search_refine, model=model)  # fmt: skip
    else:
        cost = magnitude_cost if scores is None else scores.cost
        decision = search_layers(groups, table, measure, **limits, cost=cost, refine=params.search_refine, model=model)
        if scores is not None:  # what each measured configuration scored, the chosen one's first
            decision["validation"] = scores(decision["channels"])
            for entry in decision["trace"]:
                entry["validation"] = scores(entry["channels"])
    provenance = {"table": "cached" if cached else "measured", "table_seconds": table_seconds}
    scoring = {"score": "magnitude"} if scores is None else scores.summary()
    # Neither is in method(), which keys the table: the table does not depend on them.
    repeats = {"repeats": params.search_repeats, "latency_model": params.search_latency_model}
    return {**decision, "method": {**method(params), **repeats, **provenance, "scoring": scoring}}
