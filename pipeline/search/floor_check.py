"""The run's check, before a student trains for a latency budget, that its floor can reach it
(`edgeforge run`; `--skip-floor-check` skips it). The measuring is pipeline/search/student_floor.py's."""

from __future__ import annotations

import logging

from pipeline.cache import ArtifactStore
from pipeline.config import Config
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import StageError
from pipeline.search import student_floor, teacher_budget
from pipeline.search.prune_budget import has_budget
from pipeline.training import prune_alternatives
from pipeline.training.recipes import model_label

log = logging.getLogger(__name__)


def check_student_floor(config: Config, store: ArtifactStore, plan: dict, artifacts: dict, forced: set) -> bool:
    """A run that will prune a student for prune.target_latency_ms first times the student's floor
    (pipeline/search/student_floor.py) and fails in one line, before any training, when no round of it is within
    the budget: the prune stage would find the same after the teacher and the student had trained. A student
    distilled already is checked too, before the prune stage: with a budget it cannot reach, that stage would spend
    its searches and fine-tunes (2,740 s for CIFAR-10's shortened profile on a 2-core AMD EPYC) to publish a model
    over it. With prune.target_speedup_vs_teacher the budget is the teacher's fastest timing over it, so the check
    waits for the teacher (False: not checked yet) and times it for the prune stage (teacher_budget.kept_for_prune).
    When the student meets the budget only pruned and its stride-2 variant unpruned, it warns
    (student_floor.variant_advice) unless prune.alternatives trains that variant; a student that cannot reach it
    passes with a warning when one of prune.alternatives measured within it whole (the prune stage trains that
    one)."""
    prune = config.section("prune")
    if not has_budget(prune) or not {"data", "distill", "prune"} <= plan.keys():
        return True
    if "prune" not in forced and store.lookup("prune", plan["prune"][0]) is not None:
        return True  # pruned already: nothing left to save
    if prune.target_speedup_vs_teacher is not None and "teacher" not in artifacts:
        return False
    distilled = "distill" not in forced and store.lookup("distill", plan["distill"][0]) is not None
    dataset, distill = load_dataset(artifacts["data"]), config.section("distill")
    teacher = None
    if prune.target_speedup_vs_teacher is not None:
        # Kept for the prune stage: it searches for the budget this check passes (teacher_budget.kept_for_prune).
        teacher = teacher_budget.kept_for_prune(store, plan["prune"][0], artifacts["teacher"].path, dataset, prune)
        prune = teacher_budget.resolved(prune, teacher)
    failure = student_floor.floor_check(dataset, distill, prune, distilled)
    if failure is not None:
        within = student_floor.alternatives_within(dataset, distill, prune)
        if not within:
            raise StageError(teacher_budget.summary(teacher) + failure)
        log.warning(
            "floor check: %s cannot reach prune.target_latency_ms=%g pruned; prune.alternatives measured within it "
            "whole: %s; the prune stage trains them and ships the most accurate within it",
            model_label(distill.model, distill.width),
            prune.target_latency_ms,
            ", ".join(within),
        )
        return True
    # prune.alternatives times the stride-2 variant at the student's width (auto: beside others): no advice needed
    variant, width = f"{distill.model}_s2", distill.width
    networks = prune_alternatives.resolve(prune.alternatives, distill.model, width, prune.round_to)
    if any(name == variant and width in widths for name, widths in networks):
        return True
    if (advice := student_floor.variant_advice(dataset, distill, prune)) is not None:
        log.warning("floor check: %s", advice)
    return True
