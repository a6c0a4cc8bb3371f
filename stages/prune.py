"""prune: structured channel pruning with torch-pruning, then a short distillation fine-tune.

torch-pruning's dependency graph removes whole channels (and the matching inputs of the layers
that consume them), so the pruned model is physically smaller and its MACs really drop. The result
is stored as state_dict plus pruning history: loading replays the history on a freshly built model.
With `prune.steps` > 1 the channels go gradually, each step followed by its share of the fine-tune
(pipeline/models/pruning.py); the schedule and each step's accuracies are in the metrics and the report.

The channels to remove are `prune.ratio` of every layer's, or, with `prune.target_latency_ms` (or
`prune.target_speedup_vs_teacher`: the budget from the teacher timed here, pipeline/search/teacher_budget.py), what a
search against that budget measured in onnxruntime (pipeline/search/prune_budget.py): per layer by default, each
dependency group's channel count set greedily from a latency table measured once per machine (prune_layers.py,
prune_layer_table.py); `sampled` ranks whole configurations on validation (prune_sampled.py); `uniform` is the least
single ratio that meets the budget (prune_ratio.py, prune_candidates.py). Candidates are measured before fine-tuning,
the chosen one again after it (predicted vs achieved). With `prune.drop_blocks` N, N residual blocks go first, chosen on
validation (prune_depth.py); auto, with a budget, searches and fine-tunes at 0, 1, 2... blocks removed and keeps the
most accurate on validation within the search's limit (the budget less prune.search_margin), else within the budget
(pipeline/training/prune_arms.py). Then challengers, each shipping only when more accurate on validation within the
limit, then the budget (prune_budget.shipped_arm): with `prune.uniform_baseline` the whole student pruned to the
uniform search's ratio (prune_arms.versus_uniform); with `prune.scratch_baseline` the chosen architecture trained from
fresh weights (prune_finetune.versus_scratch); with a budget, `prune.alternatives` (the student's stride-2 variant)
trained whole (pipeline/training/prune_alternatives.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.cache import Artifact
from pipeline.datasets.artifact import load_dataset
from pipeline.errors import require
from pipeline.models.depth import AUTO
from pipeline.models.factory import count_macs_and_params
from pipeline.models.storage import load_model, save_model
from pipeline.runtime import targets
from pipeline.search import prune_budget, prune_depth, teacher_budget, thread_probe
from pipeline.training import features, prune_alternatives, prune_arms
from pipeline.training.features import with_distill_features
from pipeline.training.onnx_teacher import load_teacher
from pipeline.training.prune_finetune import versus_scratch
from pipeline.training.recipes import check_recipe_params, model_label

NAME = "prune"
SECTION = "prune"
# 9-17: scratch baseline, repeats at the first settings, misses, whole blocks, auto depth, confirmed rounds,
#     the uniform arm's plateau, feature losses (each step's why: `git log -p stages/prune.py`)
# 18: prune.alternatives: with a budget, the student's stride-2 variant (or named networks) trained whole and shipped
#     when more accurate on validation within the budget ("shipped": "alternative")
# 19-20: auto times the stride-2 variant from twice the student's width to half ("widths"), trains the widest within it
# 21: with distill.baseline, each trained alternative also on labels alone ("without_teacher"), kept when more accurate
# 22: prune.target_speedup_vs_teacher: the budget from the teacher timed here ("budget_from_teacher")
# 23: that budget from the teacher's fastest of at least 5 timings, not the median of prune.search_repeats
# 24: a timing over the budget (a search's: near its limit) taken again (prune.retime_rounds, retime_gap_s apart),
#     the fastest deciding; the teacher's sessions for a relative budget retime_gap_s apart
# 25: an alternative over the budget once trained falls back to its narrower widths (prune_alternatives)
# 26: alternatives held to the search's limit (the budget less search_margin), not the budget: auto's width, the
#     fallback, and the arm that ships (within the limit first); each alternative records its "limit_ms"
# 27: with prune.target_speedup_vs_teacher the teacher timed again before the alternatives; they and the shipping
#     decision meet the fastest of all its timings (budget_from_teacher.before_alternatives)
# 28: the arms too (depths, per-layer against uniform) ship within the search's limit first, as the alternatives,
#     their timings after the fine-tune taken again while over the limit
# 29: prune.search_budget_s counts a search's measuring, not the waits between timings taken again (SearchClock)
# 30: prune.thread_probe_s: the student timed at one and several threads first; where one holds and several move,
#     candidates at one thread, no timing taken again ("thread_probe", pipeline/search/thread_probe.py)
# 31: where an alternative ships, the stage line says the search and the channels removed are the pruned student's,
#     not shipped, and ends with the alternative that ships; fixed threads said "1 thread", not "1 threads"
VERSION = 31
INPUTS = ("data", "teacher", "distill")
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")
IMPORTANCES = ("l1", "l2")
# Which model ships: the pruned architecture fine-tuned or trained from scratch, or one of prune.alternatives.
FINETUNED, FROM_SCRATCH, ALTERNATIVE = "fine-tuned", "from scratch", "alternative"
DROP_BLOCKS_EXPECTED = "an integer >= 0 (0: keep every block), or auto (each depth tried against the budget)"


@dataclasses.dataclass(frozen=True)
class Params:
    # Fraction of channels removed from every prunable layer; unused with target_latency_ms. 0.25, not 0.5: on the
    # default digits run the 50% prune of the 6k-parameter student passed the gates on the 143 validation images and
    # then failed them on test (2-3 points under the student), so `make all` ended in a failed sign-off.
    ratio: float = 0.25
    # Residual blocks (identity shortcut) to remove before pruning channels, chosen on validation one at a time. At
    # batch 1 each operator has a fixed cost that thinner channels keep: on CIFAR-10 resnet8_s2 without its first
    # block measured 0.036 ms, with 30% of its channels removed instead 0.045 ms, and after the same fine-tune it was
    # 3 points more accurate (BENCHMARKS.md, "Removing a residual block"). auto, the default: with target_latency_ms
    # the search and the fine-tune at each depth, 0, 1, 2... blocks, and the most accurate on validation within the
    # budget is the search's arm (pipeline/training/prune_arms.py: when it stops going deeper); without a budget, or
    # for a student without such blocks, none go (at a fixed ratio a block removed only costs accuracy).
    drop_blocks: int | str = dataclasses.field(default=AUTO, metadata={"expects": DROP_BLOCKS_EXPECTED})
    importance: str = "l2"  # channel ranking: l1 or l2 norm of each channel group's weights
    global_pruning: bool = False  # rank channels across layers instead of the same ratio in each layer
    # Keep a multiple of this many channels per layer (0: any count). CPU kernels are vectorized over 8 or 16
    # channels: on this machine resnet8 at 12/24/48 channels ran slower than unpruned at 16/32/64 (BENCHMARKS.md).
    round_to: int = 0
    finetune_epochs: int = 15  # distillation fine-tune after pruning (0: none)
    # 1: prune in one shot. N: gradually, in N steps (ratio * k / N of the channels gone after step k), each followed
    # by its share of finetune_epochs: the same training time as one shot, channels re-ranked after each recovery.
    steps: int = 1
    step_epochs: int | None = None  # null: split finetune_epochs evenly; N: N after each step, the last gets them all
    batch_size: int = 64
    lr: float = 0.05  # lower than training: the pruned weights are a good start
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1
    flip: bool = False
    augment: str = "shift"  # shift (small images) or resized_crop (RandomResizedCrop, for full-size images)
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    temperature: float = 4.0
    alpha: float = 0.9
    # Feature distillation in the fine-tune beside the logit loss: none, distill (the distill stage's, its weight and
    # layers), hint or attention (pipeline/training/features.py). none: on CIFAR-10 distill's attention loss in the
    # 5-epoch fine-tune lost 0.22-0.66 validation points at two fixed prunes in two seeds each (BENCHMARKS.md, "Half
    # the student on a CPU with AMX"), where in distillation from scratch it gained 1.1.
    feature_loss: str = "none"
    feature_weight: float | None = None  # null: distill's with feature_loss distill, else the method's default (1)
    feature_layers: tuple[str, ...] | None = None  # null: distill's with feature_loss distill, else stage boundaries
    # Also train the pruned architecture from scratch (fresh weights, distillation with distill's recipe) for as
    # many epochs as distill and this fine-tune together: what pruning bought over choosing that network directly.
    scratch_baseline: bool = True
    scratch_epochs: int | None = None  # null: distill.epochs + prune.finetune_epochs
    # With target_latency_ms, networks timed untrained and, within the budget, trained whole by distill's recipe; the
    # most accurate on validation within it ships (pipeline/training/prune_alternatives.py). auto: the student's
    # stride-2 variant at the widest of 2x to 0.5x the student's width within the budget. At half resnet8's
    # latency (Xeon, AMX) resnet8 pruned kept 0.66 test, resnet8_s2 whole 0.78.
    alternatives: tuple[str, ...] | None = dataclasses.field(
        default=(AUTO,), metadata={"expects": prune_alternatives.EXPECTED}
    )
    # Latency budget instead of a ratio: the least pruning whose measured latency meets it (null: use `ratio`).
    # p50 in ms at target_batch on target_provider, deployed form. Either budget set by --set replaces the other as
    # the YAML file set it (pipeline/config.py, "replaces").
    target_latency_ms: float | None = dataclasses.field(
        default=None, metadata={"replaces": "target_speedup_vs_teacher"}
    )
    # Or the budget as the teacher's timing there (fp32, as the speed-up gate times it; the fastest of 5 p50s) over
    # this factor, measured by this stage on this machine (pipeline/search/teacher_budget.py): a budget in ms holds
    # for one CPU only.
    target_speedup_vs_teacher: float | None = dataclasses.field(
        default=None, metadata={"replaces": "target_latency_ms"}
    )
    target_batch: int = 1
    target_provider: str = "cpu"  # onnxruntime execution provider: cpu, cuda, tensorrt, openvino, ...
    # null: bench.threads when that is one count, else each candidate at its own fastest session settings; or fixed
    target_threads: int | None = None
    target_device: str = "local"  # where candidates are timed: local or a device, ssh://... (one of bench.targets)
    target_format: str = "fastest"  # deployed form measured: fp32, int8, or fastest (the faster of the two)
    # How a budget is searched (nothing to search without one: `ratio` applies). uniform: one ratio for every layer.
    # per_layer: each group's channel count from a latency table measured once per machine, greedy on what a step costs
    # (search_score) per ms saved (pipeline/search/prune_layers.py); with uniform_baseline the uniform search runs
    # beside it and the more accurate on validation within the search's limit, then the budget, ships. per_layer by
    # default: on digits with a wide student at half its latency the uniform search cut every layer by 74% and failed
    # the accuracy gates, the per-layer one cut 46% where the latency is and passed (BENCHMARKS.md). sampled:
    # configurations along even, magnitude and random paths through the table, ranked on validation (BatchNorm
    # re-estimated), the best-scoring measured first (pipeline/search/prune_sampled.py)
    search: str = "per_layer"
    # per_layer's step cost: magnitude (its channels' weight norm per ms saved) or validation (the validation accuracy
    # a step loses per ms saved, BatchNorm re-estimated, no fine-tune: pipeline/search/prune_scores.py). magnitude by
    # default: on CIFAR-10 it ended 2.4 test points above validation after the fine-tune, and it is free (BENCHMARKS.md)
    search_score: str = "magnitude"
    # per_layer and sampled: how the table predicts a configuration's latency. multiplicative (the full model's p50
    # times each group's share of it left) was 0.005 ms under to 0.04 ms over the measured p50 on CIFAR-10 (AVX2), the
    # additive model (HALP's) 0.02-0.11 ms under: a sum overcounts what a conv between two thinned groups saves
    search_latency_model: str = "multiplicative"
    search_samples: int = 16  # sampled: random paths beside the even and magnitude ones (3 s a configuration on CIFAR)
    max_ratio: float = 0.9  # the most pruning the search tries
    search_step: float = 0.1  # grid of ratios scanned from 0 upwards...
    # ...then this many bisections below the first ratio that meets the budget (per_layer: along its greedy path,
    # between the last configuration that missed and the first that met)
    search_refine: int = 3
    search_margin: float = 0.1  # a candidate must measure <= budget * (1 - margin): headroom for noise
    # Seconds a search spends measuring (the waits between timings taken again are not counted); it then decides on
    # what it measured
    search_budget_s: float = 300.0
    # Each configuration a search decides on is measured this many times and the median counts (the per-layer
    # table's entries once): one measurement on a shared 2-core VM was 50% off and sent the search astray.
    search_repeats: int = 3
    # A timing over the search's limit that decides what is trained or ships (an arm after its fine-tune; an
    # alternative untrained or trained; and a search's configuration by at most 2x) is taken again up
    # to this many times, retime_gap_s apart, until within it; the fastest decides (pipeline/search/retime.py). The
    # teacher's sessions for target_speedup_vs_teacher are retime_gap_s apart too. This VM has run small models at
    # two speeds 1.6-1.8x apart for seconds to minutes at a time, and one slow timing left the CIFAR-10 profile with
    # no network within its budget (BENCHMARKS.md).
    retime_rounds: int = 4
    retime_gap_s: float = 10.0
    # With a budget and target_threads null: seconds the student is timed for first, at one thread and at every core,
    # in rounds (0: none). Where one thread holds its speed and several threads do not, every candidate is timed at
    # one thread and no timing is taken again (pipeline/search/thread_probe.py). On a Zen 4 EPYC one thread held
    # within 1% for minutes where two ran at two speeds up to 2x apart (BENCHMARKS.md, "Two threads at two speeds");
    # on another VM of that model, another day, one thread moved too, and the probe left the settings tuned.
    thread_probe_s: float = 60.0
    # per_layer and sampled: also prune to the uniform search's ratio at the same budget and fine-tune it the same
    # way; the one more accurate on validation within the limit, then the budget, ships; the report shows both (what the
    # per-layer search bought over the simple path, measured here). Costs a second search and fine-tune.
    uniform_baseline: bool = True

    def __post_init__(self):
        require(0 <= self.ratio < 1, "prune.ratio", self.ratio, "a fraction of channels in [0, 1)")
        require(
            self.drop_blocks == AUTO or isinstance(self.drop_blocks, int) and self.drop_blocks >= 0,
            "prune.drop_blocks",
            self.drop_blocks,
            DROP_BLOCKS_EXPECTED,
        )
        require(self.importance in IMPORTANCES, "prune.importance", self.importance, " or ".join(IMPORTANCES))
        kinds = (features.DISTILL, *features.KINDS)
        require(self.feature_loss in kinds, "prune.feature_loss", self.feature_loss, ", ".join(kinds))
        require(
            self.feature_weight is None or self.feature_weight > 0,
            "prune.feature_weight",
            self.feature_weight,
            "a number > 0, or null",
        )
        require(self.finetune_epochs >= 0, "prune.finetune_epochs", self.finetune_epochs, "an integer >= 0")
        require(self.round_to >= 0, "prune.round_to", self.round_to, "an integer >= 0 (0: no rounding)")
        require(
            self.steps == 1 or self.finetune_epochs >= self.steps >= 1,
            "prune.steps",
            self.steps,
            f"1 (one shot), or 2..finetune_epochs ({self.finetune_epochs}): every step is followed by a fine-tune",
        )
        require(
            self.step_epochs is None or self.step_epochs >= 1,
            "prune.step_epochs",
            self.step_epochs,
            "null (finetune_epochs split evenly between the steps) or an integer >= 1",
        )
        require(
            self.scratch_epochs is None or self.scratch_epochs >= 1,
            "prune.scratch_epochs",
            self.scratch_epochs,
            "an integer >= 1, or null for distill.epochs + prune.finetune_epochs",
        )
        check_recipe_params("prune", self)
        require(self.temperature > 0, "prune.temperature", self.temperature, "a number > 0")
        require(0 <= self.alpha <= 1, "prune.alpha", self.alpha, "a number in [0, 1]")
        for entry in self.alternatives or ():
            prune_alternatives.parse(entry)  # a one-line error naming a bad entry
        prune_budget.check_params(self)  # the budget's and its search's settings


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """With a latency budget the decision rests on measurements: they are the measuring device's."""
    if not prune_budget.has_budget(params):
        return {}
    return {"machine": targets.identity(params.target_device, targets.TIMEOUT_S)}


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    distill_params = inputs["distill"].manifest["params"]
    params = with_distill_features(params, distill_params)
    dataset = load_dataset(inputs["data"])
    # prune.target_speedup_vs_teacher: the budget in ms from the teacher timed here (None without it)
    params, from_teacher = teacher_budget.applied(params, inputs["teacher"].path, dataset, out_dir)
    teacher = load_teacher(inputs["teacher"].path)
    whole, spec = load_model(inputs["distill"].path)
    macs_before, params_before = count_macs_and_params(whole, spec)
    # prune.thread_probe_s: where one thread holds its speed and several do not, candidates at one thread
    params, threads = thread_probe.applied(params, whole, spec, dataset, out_dir)
    depth = prune_depth.chosen_blocks(whole, dataset, params, model_label(spec.name, spec.width))
    if depth is not None and params.drop_blocks == AUTO:  # a search and fine-tune per depth, the best kept
        arm, depth = prune_arms.best_depth(whole, depth, teacher, spec, dataset, params, out_dir)
    else:
        dropped = depth["blocks"] if depth is not None else []
        arm = prune_arms.finetuned_arm(whole, dropped, teacher, spec, dataset, params, out_dir)
    arm = prune_arms.versus_uniform(arm, whole, teacher, spec, dataset, params, out_dir)  # prune.uniform_baseline
    student, dropped, search, ratio = arm.student, arm.dropped, arm.search, arm.ratio
    history, steps, training = arm.history, arm.steps, arm.training
    before_finetune, shipped_scores = steps[0]["before_finetune"], steps[-1]["after_finetune"]
    student, shipped_scores, scratch, from_scratch = versus_scratch(
        student, shipped_scores, spec, dropped, history, teacher, dataset, params, distill_params, out_dir
    )  # prune.scratch_baseline
    shipped = FROM_SCRATCH if from_scratch else FINETUNED
    # With a budget, networks fast by construction, trained whole, against the pruned model: the best ships. With
    # prune.target_speedup_vs_teacher, against the teacher timed again first: the decisions that ship meet the
    # fastest of all its timings, nearer the one the bench gates with.
    if prune_alternatives.to_decide(search, spec, params):
        asked, from_teacher = teacher_budget.before_alternatives(
            thread_probe.as_asked(params, threads), from_teacher, inputs["teacher"].path, dataset, out_dir
        )  # the teacher at its own settings, as the bench times it
        params = thread_probe.resolved(asked, threads)
    alternatives, best = prune_alternatives.against_pruned(
        search, spec, shipped_scores["validation_accuracy"], teacher, dataset, params, distill_params, out_dir
    )
    if best is None:
        save_model(student, spec, out_dir, pruning_history=history, dropped_blocks=dropped)
        shipped_size = {key: steps[-1][key] for key in ("macs", "params")}
    else:  # a network of its own: no pruning to replay, no blocks removed
        save_model(best.model, best.spec, out_dir, pruning_history=[], dropped_blocks=[])
        shipped, shipped_size = ALTERNATIVE, {key: best.record[key] for key in ("macs", "params")}
        kept = prune_alternatives.kept_run(best.record)  # distilled, or on labels alone
        shipped_scores = {key: kept[key] for key in ("validation_accuracy", "test_accuracy")}
    return {
        "ratio": ratio,
        # "shipped": the depth arm's model, not the uniform baseline's (which keeps every block)
        "depth": None if depth is None else {**depth, "shipped": search is None or search.get("shipped") != "uniform"},
        "steps": steps,
        "latency_search": search,
        "budget_from_teacher": from_teacher,
        "thread_probe": threads,
        **shipped_scores,
        "validation_accuracy_before_finetune": before_finetune["validation_accuracy"],
        "test_accuracy_before_finetune": before_finetune["test_accuracy"],
        "params_before": params_before,
        "params": shipped_size["params"],  # the shipped model's, as "macs"
        "macs_before": macs_before,
        "macs": shipped_size["macs"],
        "history": training,
        "scratch": scratch,
        "alternatives": None if alternatives is None else [a.record for a in alternatives],
        "shipped": shipped,
        "finetune_features": features.described(params.feature_loss, params.feature_weight, params.feature_layers),
        "summary": teacher_budget.summary(from_teacher)
        + thread_probe.summary(threads)
        + prune_alternatives.summary(
            alternatives,
            pruned=prune_budget.search_summary(search)
            + prune_arms.summary(depth)
            + prune_depth.summary(depth, dropped)
            + prune_arms.channels_summary(ratio, steps, macs_before, params_before, scratch, shipped == FROM_SCRATCH),
        ),
    }
