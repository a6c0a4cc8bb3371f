"""What `release/` ships beside the edge model: deploy.json, labels.txt and predict.py.

deploy.json says everything a device needs to run the model as it was measured: the input and output, the
preprocessing, the class names, the session options measured fastest for this model on signoff.latency_target, and
that device's description. predict.py (pipeline/runtime/predict.py, copied) reads it and classifies image files
with only onnxruntime, numpy and Pillow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.runtime import predict
from pipeline.runtime.timing import parse_provider_options, provider_chain, provider_name

PREDICT_SOURCE = Path(predict.__file__)


def deployment(edge: dict, report: dict[str, Any], data_params: dict[str, Any]) -> dict:
    """deploy.json's content for the edge model."""
    dataset = report["dataset"]
    provider = report["config"]["signoff"]["latency_provider"]
    options = parse_provider_options(tuple(report["config"]["bench"].get("provider_options", ())))
    shape = dataset["image_shape"]  # channels, height, width
    return {
        "model": "model.onnx",
        "sha256": edge["sha256"],
        "edge_model": edge["name"],
        "input": {"name": report["input"]["name"], "shape": ["batch", *shape], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(dataset["class_names"])]},
        "classes": dataset["class_names"],
        "preprocessing": {
            "color": "L" if shape[0] == 1 else "RGB",
            # shorter side to floor(size / crop_fraction) (bilinear), then the central size x size square
            "resize": data_params.get("image_size") is not None,
            "crop_fraction": data_params.get("crop_fraction", 0.875),
            "mean": dataset["mean"],
            "std": dataset["std"],
            "formula": "pixel * (1 / (255 * std)) + (-mean / std) per channel, float32",
        },
        # onnxruntime's providers argument, in order: the one measured, then those behind it for what it lacks
        "providers": [[name, options.get(name, {})] for name in provider_chain(provider)[1]],
        "session_options": edge["settings"],
        "latency_ms": {
            batch: {k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms")}
            for batch, stats in edge["latency"].get(provider_name(provider), {}).items()
        },
        "memory": edge.get("memory"),
        "measured_on": {"target": report["latency_target"]["name"], **report["latency_target"]["environment"]},
    }


def write(out_dir: Path, edge: dict, report: dict[str, Any], data_params: dict[str, Any]) -> None:
    """deploy.json, labels.txt and predict.py into `out_dir` (the report stage's, copied to release/)."""
    deploy = deployment(edge, report, data_params)
    (out_dir / "deploy.json").write_text(json.dumps(deploy, indent=2) + "\n")
    (out_dir / "labels.txt").write_text("".join(f"{name}\n" for name in deploy["classes"]))
    (out_dir / "predict.py").write_text(PREDICT_SOURCE.read_text())
