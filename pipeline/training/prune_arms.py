"""The prune stage's arms: the student, with some residual blocks removed, searched against the latency budget, pruned,
fine-tuned and measured again (finetuned_arm); with `prune.drop_blocks: auto`, one such arm per depth (best_depth); with
`prune.uniform_baseline`, the whole student pruned to the uniform search's ratio beside the kept arm (versus_uniform).

Auto goes 0, 1, 2... blocks deep, in the order pipeline/search/prune_depth.py chose on validation; each depth gets its
own per-layer search and fine-tune, and the most accurate on validation of the arms within the search's limit (the
budget less prune.search_margin), else within the budget, is the search's arm (the shallower on a tie; the fastest when
none is within): the stage keeps an arm's fastest timing after its fine-tune, and the bench's bound gate reads the edge
model's slowest round, so an arm at the budget fails there, as resnet8_s2 x24 did (BENCHMARKS.md, "The profile at prune
VERSION 25"); alternatives are held to the same limit (prune_alternatives.py). A depth whose search measured over the
budget is not fine-tuned unless no depth meets it (then only the fastest is): the fine-tune changes weights, not
latency, and over the budget only speed counts. Each depth costs a search and a fine-tune, so it stops going deeper when
the next depth cannot be expected to pay:
- an arm kept every channel and measured within the budget: a deeper cut of a model that already fits only removes
  capacity (on CIFAR-10 at 1/4 of the teacher, resnet14_s2 whole shipped over the same student without two blocks,
  0.8092 against 0.7906 validation: BENCHMARKS.md, "Removing a residual block");
- an arm within the budget was less accurate on validation than a shallower one within it: at a fixed budget,
  removing a block buys channels back, and once a block costs more than the channels it buys, removing another
  costs more again (a single peak is assumed; the arms tried are all in the report).
An arm that misses the budget never stops the descent: a deeper one may meet it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.datasets.artifact import Dataset
from pipeline.models.depth import drop_blocks
from pipeline.search import prune_budget
from pipeline.training import distributed
from pipeline.training.prune_finetune import prune_and_finetune

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Arm:
    """One pruned model: the blocks removed, the search's decision (None without a budget), the share of channels
    removed, and once fine-tuned prune_and_finetune's history, schedule and per-epoch training (None before)."""

    dropped: list[str]
    student: torch.nn.Module
    search: dict[str, Any] | None
    ratio: float
    history: list | None = None
    steps: list[dict[str, Any]] | None = None
    training: list | None = None

    def record(self) -> dict[str, Any]:
        """What the report's depth table shows of the arm: after its fine-tune, or as its search measured it."""
        search = self.search or {}
        achieved = search.get("achieved", {})
        scores = self.steps[-1]["after_finetune"] if self.steps else {}
        return {
            "blocks": self.dropped,
            "ratio": self.ratio,
            "met": search.get("met"),
            "predicted_ms": search.get("predicted_ms"),
            "finetuned": self.steps is not None,
            # the fine-tuned model measured again; before the fine-tune, the search's measurement of its candidate
            "achieved_ms": achieved.get("latency_ms", search.get("predicted_ms")),
            "format": achieved.get("format"),
            "timed_again": achieved.get("timed_again"),  # over the budget at first (pipeline/search/retime.py)
            "validation_accuracy": scores.get("validation_accuracy"),
            "test_accuracy": scores.get("test_accuracy"),
            "macs": self.steps[-1]["macs"] if self.steps else None,
            "params": self.steps[-1]["params"] if self.steps else None,
        }


def searched_arm(
    whole: torch.nn.Module,
    dropped: list[str],
    spec,
    dataset: Dataset,
    params: Any,
    out_dir: Path,
    name: str = "",
    hint: bool | None = None,
) -> Arm:
    """A copy of `whole` without the `dropped` blocks and prune.target_latency_ms's search on it (none without a
    budget: prune.ratio applies). `name` ("depth-N" for auto's arms) names its saved decision; `hint`:
    budget_decision's."""
    student = copy.deepcopy(whole)
    drop_blocks(student, dropped)
    search = prune_budget.budget_decision(student, spec, dataset, params, out_dir, name, hint)
    if search is not None and dropped:  # the search pruned the shallower model: its arm is that model
        search = {**search, "dropped_blocks": dropped}
    return Arm(dropped, student, search, params.ratio if search is None else search["ratio"])


def finetune_arm(
    arm: Arm, teacher: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path, name: str = ""
) -> Arm:
    """`arm` pruned as its search decided and fine-tuned (in place), then measured as its candidate was; `name`
    prefixes its checkpoints, so a resumed run finds each arm's own."""
    channels = None if arm.search is None else arm.search.get("channels")  # per group, from the per-layer search
    arm.history, arm.steps, arm.training = prune_and_finetune(
        arm.student, teacher, spec, dataset, params, arm.ratio, out_dir, channels, arm=name
    )
    if arm.search is not None:  # taken again while over the search's limit, as an alternative's (shipped_arm)
        achieved = prune_budget.achieved(arm.student, spec, dataset, params, prune_budget.limit_ms(params))
        arm.search = {**arm.search, "achieved": achieved}
    return arm


def finetuned_arm(
    whole: torch.nn.Module,
    dropped: list[str],
    teacher: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    out_dir: Path,
) -> Arm:
    """searched_arm, then finetune_arm: the one arm of a fixed prune.drop_blocks."""
    arm = searched_arm(whole, dropped, spec, dataset, params, out_dir)
    return finetune_arm(arm, teacher, spec, dataset, params, out_dir)


def best_depth(
    whole: torch.nn.Module,
    depth: dict[str, Any],
    teacher: torch.nn.Module,
    spec,
    dataset: Dataset,
    params: Any,
    out_dir: Path,
) -> tuple[Arm, dict[str, Any]]:
    """prune.drop_blocks auto: an arm per depth along `depth["blocks"]` (prune_depth.chosen_blocks' order), deeper
    while it may pay (the module's docstring). The chosen arm, and `depth` with "order" (every block, in the order
    they would go), "blocks" (the chosen arm's), "arms" (each arm's record), "chosen" (its index) and "stopped"."""
    order = depth["blocks"]

    def search(count: int) -> Arm:
        last = count == len(order)  # what lowers the floor is said by the deepest arm only: the others go deeper
        return searched_arm(whole, order[:count], spec, dataset, params, out_dir, f"depth-{count}", last)

    def finetune(arm: Arm) -> Arm:
        finetune_arm(arm, teacher, spec, dataset, params, out_dir, f"depth-{len(arm.dropped)}")
        record = arm.record()
        log.info(
            "prune: %d block(s) removed, %.1f%% of channels: %.4g ms %s, validation %.4f after the fine-tune",
            len(arm.dropped),
            100 * record["ratio"],
            record["achieved_ms"],
            record["format"],
            record["validation_accuracy"],
        )
        return arm

    budget_ms = params.target_latency_ms
    arms, chosen, stopped = deeper_while_it_pays(len(order), budget_ms, prune_budget.limit_ms(params), search, finetune)
    log.info("prune: depth auto: %s; the arm without %d block(s) is the search's", stopped, chosen)
    records = [arm.record() for arm in arms]
    return arms[chosen], {
        **depth,
        "order": order,
        "blocks": order[:chosen],
        "arms": records,
        "chosen": chosen,
        "stopped": stopped,
    }


def deeper_while_it_pays(
    deepest: int, budget_ms: float, limit_ms: float, search: Callable[[int], Arm], finetune: Callable[[Arm], Arm]
) -> tuple[list[Arm], int, str]:
    """`search(count)` for count = 0, 1, ... `deepest` until stop_reason says to stop, each arm whose search measured
    within the budget fine-tuned (`finetune`) as it comes, and if none did, the fastest at the end. (Every arm
    searched, the index of the one kept: prune_budget.shipped_arm over the fine-tuned ones, within `limit_ms` (the
    search's limit) first; why the descent ended.)"""
    arms: list[Arm] = []
    stopped = f"every depth tried, 0 to {deepest} blocks"
    for count in range(deepest + 1):
        arm = search(count)
        arms.append(arm)
        if arm.search["predicted_ms"] > budget_ms:
            continue  # not fine-tuned (yet): over the budget only speed counts, and a deeper arm may meet it
        finetune(arm)
        # The leader's call on every rank: ranks that disagreed on going deeper would wait on each other for ever.
        records = [a.record() for a in arms if a.steps is not None]
        reason = distributed.broadcast_json(stop_reason(records, budget_ms))
        if reason is not None and count < deepest:
            stopped = reason
            break
    if not any(a.steps is not None and a.record()["achieved_ms"] <= budget_ms for a in arms):
        fastest = min(arms, key=lambda a: a.record()["achieved_ms"])  # searched or fine-tuned: its measured p50
        if fastest.steps is None:
            finetune(fastest)
    records = {str(i): arm.record() for i, arm in enumerate(arms) if arm.steps is not None}
    scored = {i: (record["achieved_ms"], record["validation_accuracy"]) for i, record in records.items()}
    return arms, int(distributed.broadcast_json(prune_budget.shipped_arm(scored, budget_ms, limit_ms))), stopped


def stop_reason(records: list[dict[str, Any]], budget_ms: float) -> str | None:
    """Why no deeper arm than the last of `records` (the fine-tuned arms' Arm.record()s, shallowest first) is worth
    its search and fine-tune, or None to go on."""
    last = records[-1]
    count = len(last["blocks"])
    if last["achieved_ms"] > budget_ms:
        return None
    if last["ratio"] == 0:
        return f"without {count} block(s) every channel fit the budget: a deeper cut only removes capacity"
    within = [r for r in records[:-1] if r["achieved_ms"] <= budget_ms]
    better = max(within, key=lambda r: r["validation_accuracy"], default=None)
    if better is not None and better["validation_accuracy"] > last["validation_accuracy"]:
        return (
            f"without {count} block(s) validation {last['validation_accuracy']:.4f}, under the "
            f"{better['validation_accuracy']:.4f} without {len(better['blocks'])} within the budget: past the peak"
        )
    return None


def versus_uniform(
    arm: Arm, whole: torch.nn.Module, teacher: torch.nn.Module, spec, dataset: Dataset, params: Any, out_dir: Path
) -> Arm:
    """`arm` with prune.uniform_baseline beside it (a per-layer or sampled search with a budget): the whole student
    pruned to the uniform search's ratio at the same budget and fine-tuned the same way, in the arm's search record
    (prune_budget.versus_uniform); the uniform model's arm when it is the one that ships. Unchanged without one."""
    uniform = prune_budget.uniform_baseline_decision(whole, spec, dataset, params, out_dir)
    if uniform is None:
        return arm
    if prune_budget.both_unpruned(arm.search, uniform):  # one model: fine-tuned and measured once, for both arms
        same = {**uniform, "achieved": arm.search["achieved"]}
        return dataclasses.replace(arm, search=prune_budget.versus_uniform(arm.search, arm.steps, same, arm.steps))
    unpruned = copy.deepcopy(whole)
    history, steps, training = prune_and_finetune(
        unpruned, teacher, spec, dataset, params, uniform["ratio"], out_dir, arm="uniform"
    )
    uniform = {
        **uniform,
        "achieved": prune_budget.achieved(unpruned, spec, dataset, params, prune_budget.limit_ms(params)),
    }
    search = prune_budget.versus_uniform(arm.search, arm.steps, uniform, steps)
    if search["shipped"] != "uniform":
        return dataclasses.replace(arm, search=search)
    return Arm([], unpruned, search, uniform["ratio"], history, steps, training)  # every block kept


def channels_summary(
    ratio: float, steps: list[dict], macs_before: int, params_before: int, scratch: dict | None, from_scratch: bool
) -> str:
    """The prune stage line's end: the channels the kept arm removed, its size, and its accuracy before and after the
    fine-tune (and trained from scratch)."""
    in_steps = f" in {len(steps)} steps" if len(steps) > 1 else ""
    before, after = steps[0]["before_finetune"], steps[-1]["after_finetune"]
    return (
        f"{ratio:.1%} of channels removed{in_steps}: MACs {macs_before:,} -> {steps[-1]['macs']:,}, "
        f"params {params_before:,} -> {steps[-1]['params']:,}, validation accuracy "
        f"{before['validation_accuracy']:.4f} -> {after['validation_accuracy']:.4f} after fine-tune"
        + ("" if scratch is None else f" ({scratch['validation_accuracy']:.4f} trained from scratch)")
        + (", the one trained from scratch ships" if from_scratch else "")
    )


def summary(depth: dict[str, Any] | None) -> str:
    """The stage line's words for auto's arms ("" without them)."""
    if depth is None or "arms" not in depth:
        return ""
    arms = ", ".join(
        f"{len(r['blocks'])}: {r['validation_accuracy']:.4f} at {r['achieved_ms']:.4g} ms"
        if r.get("finetuned", True)
        else f"{len(r['blocks'])}: over the budget ({r['achieved_ms']:.4g} ms), not fine-tuned"
        for r in depth["arms"]
    )
    return f"depth auto, blocks removed: validation accuracy after the fine-tune ({arms}), {depth['chosen']} kept; "
