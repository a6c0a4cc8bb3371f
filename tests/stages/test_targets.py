"""Sign-off on the device you deploy to: the pipeline measuring on a device over SSH (a real sshd on 127.0.0.1),
the report comparing and gating on signoff.latency_target, deploy.json carrying that target's settings, and the
searches measuring there."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runner import load_config, run_pipeline
from pipeline.runtime import targets
from pipeline.runtime.onnx_export import export_onnx
from pipeline.search import prune_candidates, quantize_variants
from stages import quantize
from tests.conftest import FAST, copy_of, shared_cache
from tests.pipeline.search.test_quantize_variants import exported_model_and_data

pytestmark = pytest.mark.slow  # pipeline runs with a device


@pytest.fixture
def fast_store(tmp_path, fast_cache):
    return copy_of(fast_cache, tmp_path / "artifacts")


@pytest.fixture(scope="session")
def fast_cache(tmp_path_factory):
    """The FAST pipeline's cache, built once per test session (conftest.shared_cache)."""
    return shared_cache(tmp_path_factory, "fast", FAST)


def test_models_are_compared_gated_and_shipped_on_the_latency_target(fast_store, device):
    sets = [f'bench.targets=[local, "{device}"]', f"signoff.latency_target={device}", "bench.target_accuracy=true"]
    results = run_pipeline(load_config(overrides=[*FAST, *sets]), fast_store)
    bench, report = results[-2].artifact.metrics, results[-1].artifact
    assert list(bench["targets"]) == ["local", device]
    for model in bench["models"]:
        assert set(model["targets"]) == {"local", device}
        on_device = model["targets"][device]
        assert on_device["latency"]["CPUExecutionProvider"]["1"]["p50_ms"] > 0
        assert on_device["test_accuracy"] == pytest.approx(model["accuracy"])  # the same onnxruntime here
    written = json.loads(report.file("report.json").read_text())
    assert written["latency_target"]["name"] == device
    edge = next(m for m in written["models"] if m["name"] == written["edge_model"])
    assert edge["latency"] == edge["targets"][device]["latency"]  # gated on the device's numbers
    assert "min_accuracy_on_target" in [gate["name"] for gate in written["signoff"]["gates"]]
    deploy = json.loads(report.file("deploy.json").read_text())
    assert (
        deploy["measured_on"]["target"] == device and deploy["session_options"] == edge["targets"][device]["settings"]
    )
    markdown = report.file("report.md").read_text()
    assert "## Where latency was measured" in markdown and device.split("?")[0] + ": p50 / p90 ms" in markdown
    assert "Where latency was measured" in report.file("report.html").read_text()


def test_a_target_too_slow_for_the_budget_fails_the_gate_not_the_run(fast_store, device):
    sets = [f'bench.targets=["{device}"]', "signoff.max_latency_ms=0.000001"]
    results = run_pipeline(load_config(overrides=[*FAST, *sets]), fast_store)
    report = json.loads(results[-1].artifact.file("report.json").read_text())
    gate = next(g for g in report["signoff"]["gates"] if g["name"] == "max_latency_ms_p90_batch_1")
    assert not gate["passed"] and not report["signoff"]["passed"]
    assert report["latency_target"]["name"] == device  # the first target when none is named


def test_a_failed_device_run_caches_nothing(fast_store, device):
    broken = device.replace("python=", "python=/no/such/python3&x=")  # an unknown query key: refused up front
    with pytest.raises(ConfigError, match="expected ssh://"):
        load_config(overrides=[*FAST, f'bench.targets=["{broken}"]'])
    missing = device.replace("edgeforge-test-device", "edgeforge-test-device:1")
    before = sorted(path.name for path in (fast_store.cache / "bench").iterdir())
    with pytest.raises(Exception, match="cannot connect"):
        run_pipeline(load_config(overrides=[*FAST, f'bench.targets=[local, "{missing}"]']), fast_store)
    assert sorted(path.name for path in (fast_store.cache / "bench").iterdir()) == before


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["signoff.latency_target=ssh://pi@board"], "signoff.latency_target='ssh://pi@board' is not measured"),
        (["quantize.search=true", "quantize.search_device=ssh://pi@board"], "quantize.search_device='ssh://pi@board'"),
        (
            [
                "prune.target_latency_ms=1",
                "prune.target_device=ssh://pi@board",
                "bench.targets=[local, ssh://pi@board]",
            ],
            "prune.target_device='ssh://pi@board' must be where the edge model is gated",
        ),
        (["bench.targets=[local, local]"], "bench.targets"),
        (["bench.provider_options=[openvino-device_type]"], "PROVIDER:KEY=VALUE"),
    ],
)
def test_targets_that_do_not_fit_together_are_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(overrides=[*FAST, *sets])


def test_the_quantization_search_measures_on_the_device(tmp_path, device, monkeypatch):
    calibration, inputs, labels = exported_model_and_data(tmp_path, monkeypatch)
    params = quantize.Params(
        search=True,
        search_methods=("minmax",),
        calibration_samples=32,
        calibration_batch=16,
        search_threads=1,
        search_device=device,
    )
    searched = quantize_variants.search(
        tmp_path / "model.onnx", tmp_path / "int8.onnx", calibration, (inputs, labels), params
    )
    assert searched["device"] == device and searched["isa"] == targets.describe("local", 60)["isa"]
    local = [quantize_variants.validation_accuracy(tmp_path / f, inputs, labels) for f in ("int8.onnx",)]
    assert searched["variants"][searched["chosen"]]["validation_accuracy"] == pytest.approx(local[0])
    assert all(variant["p50_ms"] > 0 for variant in searched["variants"])


def test_the_budget_search_times_candidates_on_the_device(tmp_path, device, monkeypatch):
    fast = dict(warmup_runs=2, warmup_seconds=0, min_runs=20, min_seconds=0)
    monkeypatch.setattr(prune_candidates, "SEARCH_TIMING", (fast, fast))
    spec = ModelSpec("cnn", 8, 1, 10, (8, 8))
    model = build_model(spec).eval()
    params = SimpleNamespace(
        target_batch=1, target_provider="cpu", target_threads=1, target_format="fp32", target_device=device
    )
    images = np.zeros((8, 1, 8, 8), dtype=np.uint8)
    candidates = prune_candidates.Candidates(model, spec, images, ([0.0], [1.0]), params, None)
    try:
        measured = candidates.measure(model)
    finally:
        candidates.close()
    assert measured["format"] == "fp32" and measured["latency_ms"] > 0
    assert measured["fp32_settings"] == "1 thread, spinning off, all"


def test_edgeforge_bench_measures_a_file_on_the_device(tmp_path, device):
    spec = ModelSpec("cnn", 4, 1, 10, (8, 8))
    export_onnx(build_model(spec).eval(), spec, tmp_path / "model.onnx", 18)
    args = [
        "bench",
        str(tmp_path / "model.onnx"),
        "--target",
        device,
        "--provider",
        "cpu",
        "--provider",
        "xnnpack",
        "--threads",
        "1",
        "--threads",
        "2",
        "--rounds",
        "2",
        "--json",
    ]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    measured = [row for row in result["results"] if "skipped" not in row]
    assert [(row["threads"], row["batch"]) for row in measured] == [(1, 1), (2, 1)]
    assert all("XnnpackExecutionProvider" in row["skipped"] for row in result["results"] if "skipped" in row)
    assert result["target"] == device and result["environment"]["isa"] == targets.describe("local", 60)["isa"]
