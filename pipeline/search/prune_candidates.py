"""Latency of pruned candidates in their deployed form, for the prune stage's latency-budget search.

A candidate is measured before any fine-tuning (weights do not change latency, architecture does): prune a copy
of the student at the ratio, export it to ONNX, quantize it when int8 may be deployed, and time it in
onnxruntime at the target batch, provider and thread count. Each model gets its own session (benchtool.bench_one).

Fixed choices, recorded in the decision (`method`):
- Timing: SEARCH_TIMING warm-up and minimums, p50. Shorter than a bench run: the search compares candidates, the
  bench stage measures what ships.
- int8 candidates use the quantize stage's default arguments (QDQ, per-channel, reduce_range, u8 activations,
  MinMax) on CALIBRATION_IMAGES training images. The quantize stage may later choose another variant; calibration
  method and reduce_range do not change the graph, per-tensor scales or s8 activations may change latency by a few
  percent, which the margin covers and the bench stage measures.
- opset EXPORT_OPSET, as the export stage's default.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.datasets.artifact import read_rows
from pipeline.errors import StageError
from pipeline.models.factory import count_macs_and_params
from pipeline.models.spec import ModelSpec
from pipeline.runtime import environment, latency, targets, tuning
from pipeline.runtime.onnx_export import DEFAULT_OPSET, export_onnx
from pipeline.runtime.quantization import QuantSettings, arguments, quantize
from pipeline.runtime.sessions import INPUT_NAME, SessionSettings, thread_count
from pipeline.runtime.timing import ProviderUnavailable, provider_name
from pipeline.search import retime
from pipeline.search.prune_ratio import search_limit, search_ratio
from pipeline.training.augment import normalize

# Screen and refine presets of each candidate's settings search: shorter than the bench stage's, which measures
# what ships; the search compares candidates.
SEARCH_TIMING = (latency.SEARCH_SCREEN, latency.SEARCH)
CALIBRATION_IMAGES = 64
EXPORT_OPSET = DEFAULT_OPSET
FORMATS = {"fp32": ("fp32",), "int8": ("int8",), "fastest": ("fp32", "int8")}  # prune.target_format -> measured


# Exported files kept per setting: `repeated` re-times one setting back to back and `edgeforge floor` each model's
# two forms in turn, so a few suffice; older ones are deleted (a full-size model's file can be 100 MB).
KEPT_SETTINGS = 8

# A search's configuration over its limit by at most this factor is measured again while over it (`reaching`); one
# further over is not: the slow episodes measured on this VM were 1.6-1.8x (once 4x, BENCHMARKS.md), and a search
# measures several configurations over its limit on its way, each of which would wait out the rounds.
SLOW_EPISODE = 2.0


class Candidates:
    """Measures pruned copies of one student; `prune(model, setting)` prunes a model in place to a setting: a ratio
    (the uniform search) or channel counts per group (the per-layer search, pipeline/search/prune_layers.py).

    A setting measured again (prune.search_repeats) is timed again from the files of its first export, at the
    session settings its first measurement chose: export and quantization are deterministic (the export stage's
    tests check the bytes), and the settings search is the costly part (every setting screened, 16 on 2 cores,
    against one refined), so only the timing is repeated. Digits' uniform search went from 174-254 s to 85-87 s
    with the same decision (BENCHMARKS.md, "Session settings searched once per candidate").
    """

    def __init__(self, student: nn.Module, spec: ModelSpec, images: np.ndarray, norm: tuple, params: Any, prune):
        self.student, self.spec, self.params, self.prune = student, spec, params, prune
        inputs = normalize(torch.from_numpy(read_rows(images, slice(0, CALIBRATION_IMAGES))), *norm).numpy()
        self.calibration = inputs
        self.feed = {INPUT_NAME: np.resize(inputs, (params.target_batch, *inputs.shape[1:]))}
        self.work = tempfile.TemporaryDirectory(prefix="edgeforge-prune-search-")
        self.exported: dict[str, dict[str, Any]] = {}  # setting (canonical JSON) -> its files, MACs and parameters
        self.chosen: dict[Path, SessionSettings] = {}  # a kept file -> the settings its first measurement chose
        self.exports = 0

    def __call__(self, setting: float | dict[str, int]) -> dict[str, Any]:
        key = json.dumps(setting, sort_keys=True)
        if key not in self.exported:
            model = copy.deepcopy(self.student).eval()
            if setting:  # ratio 0 or no group's count: the student itself
                self.prune(model, setting)
            self.exported[key] = self.export(model)
            while len(self.exported) > KEPT_SETTINGS:
                self.discard(self.exported.pop(next(iter(self.exported))))
        return self.time(self.exported[key])

    def retime(self, settings: list[float | dict[str, int]]) -> list[float]:
        """The deployed-form p50 of each setting, timed again in the order given (pipeline/search/prune_plateau.py
        interleaves them)."""
        return [self(setting)["latency_ms"] for setting in settings]

    def measure(self, model: nn.Module, budget_ms: float | None = None) -> dict[str, Any]:
        """{"latency_ms": the deployed form's p50, "format", "fp32_ms"/"int8_ms", "macs", "params"} of any model
        (the fine-tuned one), exported afresh; with `budget_ms`, taken again while over it (pipeline/search/retime.py:
        prune.retime_rounds, prune.retime_gap_s)."""
        exported = self.export(model)
        try:
            first = self.time(exported)
            if budget_ms is None:
                return first
            again = self.params.retime_rounds, self.params.retime_gap_s
            return retime.until_within(first, lambda: self.time(exported), budget_ms, *again)
        finally:
            self.discard(exported)

    def discard(self, exported: dict[str, Any]) -> None:
        """Delete an export's files, and the settings chosen for them."""
        for path in exported["paths"].values():
            path.unlink(missing_ok=True)
            self.chosen.pop(path, None)

    def export(self, model: nn.Module) -> dict[str, Any]:
        """The model's file in each form prune.target_format measures, with its MACs and parameter count."""
        macs, count = count_macs_and_params(model, self.spec)
        self.exports += 1
        fp32 = Path(self.work.name) / f"candidate-{self.exports}.onnx"
        export_onnx(model, self.spec, fp32, EXPORT_OPSET)
        paths = {"fp32": fp32}
        if "int8" in FORMATS[self.params.target_format]:
            paths["int8"] = fp32.with_name(f"candidate-{self.exports}-int8.onnx")
            quantize(fp32, paths["int8"], self.calibration, QuantSettings())
        if "fp32" not in FORMATS[self.params.target_format]:
            fp32.unlink()
            del paths["fp32"]
        return {"paths": paths, "macs": macs, "params": count}

    def time(self, exported: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"macs": exported["macs"], "params": exported["params"]}
        for form, path in exported["paths"].items():
            result[f"{form}_ms"], result[f"{form}_settings"] = self.p50(path)
        best = min(FORMATS[self.params.target_format], key=lambda form: result[f"{form}_ms"])
        return {"latency_ms": result[f"{best}_ms"], "format": best, **result}

    def p50(self, path: Path) -> tuple[float, str]:
        """The candidate's p50 at its own fastest settings (or prune.target_threads, fixed), and those settings."""
        batch, provider = self.params.target_batch, self.params.target_provider
        if self.params.target_device != targets.LOCAL:
            return self.p50_on_device(path)
        tried = [self.chosen[path]] if path in self.chosen else settings_tried(self.params)
        try:
            settings, p50, _ = tuning.tune(path, provider, self.feed, batch, tried, *SEARCH_TIMING)
        except ProviderUnavailable as reason:
            raise StageError(f"prune: prune.target_provider={provider!r} cannot be measured here: {reason}") from None
        self.chosen[path] = settings
        return p50, settings.label()

    def p50_on_device(self, path: Path) -> tuple[float, str]:
        """The same on prune.target_device: its settings searched there (its own cores) on the file's first
        measurement, then the candidate timed in interleaved rounds; the p50 is the median of the rounds' medians,
        as tuning's is."""
        batch, provider, device = self.params.target_batch, self.params.target_provider, self.params.target_device
        files = targets.Files()
        model = files.add(path)
        feed = files.save(self.feed[INPUT_NAME], Path(self.work.name), "feed")
        fixed = self.params.target_threads is not None or provider != "cpu"
        tried = settings_tried(self.params) if fixed else None  # None: the device's own cores
        request = targets.request(
            {"candidate": model},
            {batch: feed},
            batch,
            SEARCH_TIMING[1],
            providers=(provider,),
            settings=[self.chosen[path]] if path in self.chosen else tried,
            screen=SEARCH_TIMING[0],
            refine=SEARCH_TIMING[1],
            rounds=tuning.REFINE_ROUNDS,
        )
        answer = targets.bench(device, request, files.located, targets.TIMEOUT_S)
        if provider in answer["skipped_providers"]:
            why = answer["skipped_providers"][provider]
            raise StageError(f"prune: prune.target_provider={provider!r} cannot be measured on {device}: {why}")
        measured = answer["models"]["candidate"]
        stats = measured["latency"][provider_name(provider)][str(batch)]
        self.chosen[path] = SessionSettings.from_record(measured["settings"])
        return float(np.median(stats["round_medians_ms"])), measured["settings_label"]

    def close(self) -> None:
        self.work.cleanup()


def repeated(measure: Callable[[Any], dict[str, Any]], repeats: int) -> Callable[[Any], dict[str, Any]]:
    """`measure` taken `repeats` times per setting, back to back; the result whose latency is the median (the lower
    middle of an even count), with every latency in the order measured ("latency_runs_ms"). On a shared 2-core VM
    one configuration measured 0.342 ms in a search and 0.218-0.237 ms in three later ones (BENCHMARKS.md): a
    search that decides on one measurement follows such outliers."""

    def measured(setting: Any) -> dict[str, Any]:
        results = [measure(setting) for _ in range(repeats)]
        middle = sorted(results, key=lambda result: result["latency_ms"])[(repeats - 1) // 2]
        return {**middle, "latency_runs_ms": [result["latency_ms"] for result in results]}

    return measured


class SearchClock:
    """The clock a search reads prune.search_budget_s on: `monotonic` less the waits between timings taken again
    (`sleep`, prune.retime_gap_s each). The budget bounds the search's measuring; a wait is there to let a slow
    episode of the host pass, and counted it cut searches short: on digits (resnet8 x8, a budget of half the
    teacher, 2026-12-07) each ratio of the uniform search measured over its limit and was taken again four times
    10 s apart; its 300 s ran out after ratios 0 to 0.4 (0.019-0.023 ms), ratios 0.5 to 0.9 were never measured,
    and the fastest of those measured, the unpruned student, was used."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.monotonic, self.wait, self.waited = monotonic, sleep, 0.0

    def sleep(self, seconds: float) -> None:
        self.wait(seconds)
        self.waited += seconds

    def __call__(self) -> float:
        return self.monotonic() - self.waited


def reaching(
    measure: Callable[[Any], dict[str, Any]], params: Any, clock: SearchClock
) -> Callable[[Any], dict[str, Any]]:
    """`measure` for a search: a configuration over the search's limit (the budget under prune.search_margin) by at
    most SLOW_EPISODE times is measured again while over it (pipeline/search/retime.py: prune.retime_rounds,
    retime_gap_s apart), the fastest deciding. In one CIFAR-10 run the per-layer search measured 0.0830 ms against
    a 0.0725 ms limit, called the budget out of reach and removed 69% of the channels, where the same configuration
    timed 0.0515 ms in the interleaved rounds that followed (BENCHMARKS.md, "A host at two speeds"). The waits are
    `clock`'s, which the search's time budget does not count."""
    limit_ms = search_limit(params.target_latency_ms, params.search_margin)

    def measured(setting: Any) -> dict[str, Any]:
        first = measure(setting)
        if first["latency_ms"] > SLOW_EPISODE * limit_ms:  # further over than an episode explains: measured once
            return first
        again = params.retime_rounds, params.retime_gap_s
        return retime.until_within(first, lambda: measure(setting), limit_ms, *again, sleep=clock.sleep)

    return measured


def settings_tried(params: Any) -> list[SessionSettings]:
    """Every candidate is timed at its own fastest session settings, as its model would ship (or at
    prune.target_threads, spinning off, when set; a GPU provider takes no thread settings)."""
    if params.target_threads is not None or params.target_provider != "cpu":
        return [SessionSettings(params.target_threads or 1)]
    return tuning.candidates(tuple(range(1, environment.cores() + 1)), (False, True), tuning.all_levels())


def method(params: Any) -> dict[str, Any]:
    """What the search's latencies mean, recorded beside them."""
    return {
        "provider": params.target_provider,
        "device": params.target_device,
        "batch": params.target_batch,
        "settings": "tuned per candidate" if params.target_threads is None else thread_count(params.target_threads),
        "formats": list(FORMATS[params.target_format]),
        "statistic": "p50",
        "timing": SEARCH_TIMING,
        "int8": {**arguments(QuantSettings()), "calibration_images": CALIBRATION_IMAGES},
        "opset": EXPORT_OPSET,
    }


def search(candidates: Candidates, params: Any) -> dict[str, Any]:
    """The decision for `params.target_latency_ms` (see pipeline.latency_search), with the method recorded."""
    clock = SearchClock()
    decision = search_ratio(
        reaching(repeated(candidates, params.search_repeats), params, clock),
        budget_ms=params.target_latency_ms,
        margin=params.search_margin,
        max_ratio=params.max_ratio,
        step=params.search_step,
        refine=params.search_refine,
        time_budget_s=params.search_budget_s,
        clock=clock,
    )
    return {**decision, "method": {**method(params), "repeats": params.search_repeats}}
