"""Which residual blocks `prune.drop_blocks` removes from the student: chosen on validation, one at a time.

Each step removes, of the blocks still there, the one whose removal keeps the most validation accuracy (ties: the
least cross-entropy), scored as the per-layer search scores its steps: on a copy, BatchNorm re-estimated on
training images, no fine-tune (pipeline/search/prune_scores.py). Greedy, as NetAdapt is: a block is chosen given
the ones already gone. The channel searches and the fine-tune then work on the shallower model
(pipeline/models/depth.py says why blocks: at batch 1 they are operators that channel pruning cannot remove).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from pipeline.datasets.artifact import Dataset
from pipeline.errors import StageError
from pipeline.models.depth import AUTO, blocks_asked, drop_blocks, droppable_blocks, too_few_blocks
from pipeline.search.prune_scores import ValidationScores
from pipeline.training import distributed

log = logging.getLogger(__name__)


def _drop(model: nn.Module, setting: dict[str, int]) -> None:
    drop_blocks(model, sorted(setting))


def chosen_blocks(student: nn.Module, dataset: Dataset, params: Any, model_label: str) -> dict[str, Any] | None:
    """None without prune.drop_blocks (auto: without a budget or a droppable block); else {"blocks": the names
    removed, in the order chosen (with auto: every droppable block, in the order they would go), "droppable": every
    block that could go, "steps": each step's scores of every block it weighed, "before": the student's own score,
    "seconds"}. A one-line StageError when the student has fewer droppable blocks than asked. Under torchrun the
    leader scores and tells the rest: every rank must remove the same blocks, or DDP's parameter check fails."""
    droppable = droppable_blocks(student)
    if params.drop_blocks != AUTO and params.drop_blocks > len(droppable):
        raise StageError(too_few_blocks(params.drop_blocks, model_label, droppable))
    count = len(blocks_asked(params.drop_blocks, droppable, params.target_latency_ms))
    if not count:
        return None  # none asked; or auto with nothing to weigh depth against, or no block to drop
    if not distributed.is_leader():
        return distributed.broadcast_json(None)
    return distributed.broadcast_json(_greedy(student, dataset, params, droppable, count))


def _greedy(student: nn.Module, dataset: Dataset, params: Any, droppable: list[str], count: int) -> dict[str, Any]:
    """chosen_blocks' record: `count` blocks removed one at a time, each the one whose absence scores best."""
    scores = ValidationScores(student, dataset, params.seed, _drop)
    chosen: list[str] = []
    steps = []
    for _ in range(count):
        weighed = {name: scores(dict.fromkeys([*chosen, name], 0)) for name in droppable if name not in chosen}
        best = max(weighed, key=lambda name: (weighed[name]["accuracy"], -weighed[name]["loss"]))
        chosen.append(best)
        steps.append({"dropped": best, "weighed": weighed})
        others = ", ".join(f"{name} {score['accuracy']:.4f}" for name, score in weighed.items() if name != best)
        log.info(
            "prune: residual block %s %s: validation %.4f without it, BatchNorm re-estimated (%s)",
            best,
            "next in the order of depths to try" if params.drop_blocks == AUTO else "removed",
            weighed[best]["accuracy"],
            f"without {others}" if others else "the only block weighed",
        )
    return {
        "blocks": chosen,
        "droppable": droppable,
        "before": scores({}),
        "steps": steps,
        **scores.summary(),
    }


def summary(depth: dict[str, Any] | None, removed: list[str]) -> str:
    """The stage line's words for the `removed` blocks ("" without any)."""
    if depth is None or not removed:
        return ""
    last = depth["steps"][len(removed) - 1]["weighed"][removed[-1]]
    return (
        f"residual blocks {', '.join(removed)} removed (of {len(depth['droppable'])} droppable; validation "
        f"{depth['before']['accuracy']:.4f} -> {last['accuracy']:.4f} with BatchNorm re-estimated, before any "
        "fine-tune); "
    )
