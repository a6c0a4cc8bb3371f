"""The measuring, wherever it runs: this machine or a device over SSH (pipeline/runtime/remote.py) run this code.

`bench(request, locate)` measures models as the bench stage describes: each model's session settings searched
(tuning.py) and, where more than one thread won, held to the rounds against one thread (one_thread_rival.py), every
model and batch in interleaved rounds (rounds.py) on every provider asked for (a provider this onnxruntime lacks is
skipped, never replaced), the peak memory of a fresh process (memory.py), and, when asked, the predictions of every
model on given images (preprocessed by predict.normalize, as the release does). Files are named by their sha256 and
found with `locate`: on this machine the files themselves, on a device its cache.

On a device this module runs from the runner bundle (bundle.py): only the standard library, numpy and onnxruntime
are needed there. `main` is the device's entry point: requests in, one JSON line out for each.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime import environment, memory, one_thread_rival, rounds, tuning
from pipeline.runtime.latency import summarize, tail_intervals
from pipeline.runtime.predict import Normalized
from pipeline.runtime.sessions import INPUT_NAME, SessionSettings, run_batches, session
from pipeline.runtime.timing import ProviderUnavailable, provider_name, time_session

Locate = Callable[[str], Path]
# What a bench answer says of each model besides its predictions: its settings (the search, and the check against
# one thread), latency and memory
MEASURED = ("settings", "settings_label", "settings_search", "settings_check", "latency", "memory")
IDLE_S = 120.0  # a runner nobody asked anything for this long ends (the host reuses one idle for at most 60 s)


def bench(request: dict[str, Any], locate: Locate) -> dict[str, Any]:
    """Measure the request's models (see the module docstring); {"environment", "models", "skipped_providers"}."""
    paths = {name: locate(digest) for name, digest in request["models"].items()}
    feeds = {int(b): load_feed(locate(d)) for b, d in request["feeds"].items()}
    batch = request["settings_batch"]
    presets = request.get("screen"), request.get("refine")  # the searches' shorter presets; None: tuning's own
    settings, searches = {}, {}
    tried = candidates(request)
    for name, path in paths.items():
        if len(tried) == 1:  # nothing to choose: the rounds below measure it
            settings[name], searches[name] = tried[0], None
        else:
            settings[name], _, searches[name] = tuning.tune(path, "cpu", feeds[batch], batch, tried, *presets)
    # Held to the rounds (one_thread_rival.py): a search of more than one thread timed beside one thread
    rivals = {name: r for name in paths if (r := one_thread_rival.rival(searches[name], tried, settings[name]))}
    latency, skipped, checks = measure_latency(paths, settings, feeds, request, rivals)
    switched = {name: rivals[name] for name, check in checks.items() if check["kept"] == "one_thread"}
    for name, kept in switched.items():
        settings[name], searches[name] = kept, one_thread_rival.chosen_in_trace(searches[name], kept)
    if switched:  # measured again at the settings they keep, at every batch and provider
        latency.update(measure_latency({name: paths[name] for name in switched}, settings, feeds, request, {})[0])
    models = {
        name: {
            "settings": settings[name].record(),
            "settings_label": settings[name].label(),
            "settings_search": searches[name],
            "settings_check": checks.get(name),
            "latency": latency[name],
            "memory": peak_memory(path, settings[name], feeds[batch]) if request["memory"] else None,
            "predictions": predictions(path, settings[name], request.get("accuracy"), locate),
        }
        for name, path in paths.items()
    }
    return {"environment": device_environment(), "models": models, "skipped_providers": skipped}


def load_feed(path: Path) -> dict[str, np.ndarray]:
    """A model's inputs: one .npy array (the pipeline's models take one input, `input`) or an .npz of named ones."""
    loaded = np.load(path, allow_pickle=False)
    return dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else {INPUT_NAME: loaded}


def candidates(request: dict[str, Any]) -> list[SessionSettings]:
    """The session settings tried for every model (just the first of each list without tuning)."""
    threads = request["threads"] or list(range(1, environment.cores() + 1))
    if not request["tune"]:
        return [SessionSettings(threads[0], request["spinning"][0], request["optimization"][0])]
    return tuning.candidates(tuple(threads), tuple(request["spinning"]), tuple(request["optimization"]))


def measure_latency(
    paths: dict[str, Path],
    settings: dict[str, SessionSettings],
    feeds: dict[int, dict],
    request: dict[str, Any],
    rivals: dict[str, SessionSettings],
) -> tuple[dict[str, dict], dict[str, str], dict[str, dict]]:
    """{model: {provider: {batch: stats}}} from interleaved rounds, the providers skipped (and why), and each of
    `rivals`' checks (one_thread_rival.held): on the CPU its one-thread setting is a job of the same rounds."""
    latency: dict[str, dict] = {name: {} for name in paths}
    skipped, checks = {}, {}
    preset, batch_of_settings = request["preset"], request["settings_batch"]
    for provider in request["providers"]:
        options = request["provider_options"].get(provider_name(provider), {})
        jobs = {
            f"{name}@{batch}": _job(paths[name], provider, settings[name], feeds[batch], preset, batch, options)
            for name in paths
            for batch in request["batch_sizes"]
        }
        on_cpu = provider_name(provider) == provider_name("cpu")
        rival_jobs = {name: f"{name}@{batch_of_settings}{one_thread_rival.SUFFIX}" for name in rivals if on_cpu}
        for name, job_name in rival_jobs.items():
            feed = feeds[batch_of_settings]
            jobs[job_name] = _job(paths[name], provider, rivals[name], feed, preset, batch_of_settings, options)
        try:
            measured = rounds.measure(jobs, request["rounds"], request["tolerance"], request["retries"])
        except ProviderUnavailable as reason:
            skipped[provider] = str(reason)  # reported, never replaced by CPU
            continue
        for name, job_name in rival_jobs.items():
            ours = one_thread_rival.every_round(measured.pop(job_name))
            theirs = one_thread_rival.every_round(measured[f"{name}@{batch_of_settings}"])
            checks[name] = one_thread_rival.held(settings[name], rivals[name], theirs, ours)
        for key, result in measured.items():
            name, batch = key.rsplit("@", 1)
            stats = {
                **summarize(result["times"], int(batch)),
                **tail_intervals(result["times"]),  # what signoff.latency_basis: bound reads for a p95 or p99
                "round_medians_ms": result["round_medians"],
                "dropped_rounds_ms": result["dropped_medians"],
                "spread": result["spread"],
                "stable": result["stable"],
            }
            latency[name].setdefault(provider_name(provider), {})[batch] = stats
    return latency, skipped, checks


def peak_memory(path: Path, settings: SessionSettings, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    return memory.peak_memory(path, settings, list(feed[INPUT_NAME].shape))


def _job(path: Path, provider: str, settings: SessionSettings, feed: dict, preset: dict, batch: int, options: dict):
    return lambda: time_session(path, provider, settings, feed, preset, batch, options)[0]


def predictions(
    path: Path, settings: SessionSettings, accuracy: dict[str, Any] | None, locate: Locate
) -> dict[str, list[int]] | None:
    """{split: predicted class per image} with the model's own settings, on the request's images: uint8 ones are
    preprocessed as the release does; float32 ones are taken as the model's inputs."""
    if not accuracy:
        return None
    sess = session(path, settings)
    found = {}
    for split, digest in accuracy["images"].items():
        inputs = np.load(locate(digest), mmap_mode="r", allow_pickle=False)  # read a batch at a time
        if inputs.dtype != np.float32:
            inputs = Normalized(inputs, accuracy["mean"], accuracy["std"])
        found[split] = run_batches(sess, inputs).argmax(1).tolist()
    return found


def device_environment() -> dict[str, Any]:
    """What a device's numbers were measured on: its identity, ISA flags and Python."""
    return {**environment.identity(), "isa": environment.isa(), "python": platform.python_version()}


def main(argv: list[str]) -> int:
    """The device's entry point, `runner.pyz CACHE`: one request per stdin line (base64 JSON), its answer one JSON
    line on stdout (pipeline/runtime/remote_runner.py keeps one runner up for a whole run). It ends when stdin
    closes, even mid-measurement (the ssh client that started it is gone: killed, timed out, the connection dropped,
    and nobody would read the answer), or after IDLE_S without a request."""
    cache = Path(argv[0]).expanduser()
    requests: queue.Queue[bytes] = queue.Queue()

    def read():
        # os.read, not sys.stdin: a thread blocked in a buffered read would hold its lock at interpreter exit.
        pending = b""
        while chunk := os.read(sys.stdin.fileno(), 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                requests.put(line)
        os._exit(70)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = requests.get(timeout=IDLE_S)
        except queue.Empty:
            return 0
        print(json.dumps(answer(json.loads(base64.b64decode(line)), cache)), flush=True)


def answer(request: dict[str, Any], cache: Path) -> dict[str, Any]:
    if request["op"] == "environment":
        return device_environment()
    return bench(request, lambda digest: cache / digest)
