"""Training throughput: the pipeline's training loop against a bare forward+backward, in one run.

The bare loop trains on one pre-normalized batch held in memory, so it measures the model alone; the
pipeline loop (pipeline.train.fit) adds shuffling, uint8 -> float, augmentation, normalization and
bookkeeping. Both use the same model, batch size, optimizer and channels_last layout, and on CUDA the same bf16
autocast and cuDNN autotuning.

    python benchmarks/throughput.py --config configs/cifar10-cpu.yaml --model resnet20 --batch-size 256
    python benchmarks/throughput.py --config configs/cifar10-gpu.yaml --model resnet56 --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pipeline.cache import ArtifactStore
from pipeline.datasets.artifact import Dataset, load_dataset, read_rows
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.runner import load_config, run_pipeline
from pipeline.training.augment import normalize
from pipeline.training.loop import Recipe, fit


def bare_images_per_s(
    spec: ModelSpec, batch: torch.Tensor, labels: torch.Tensor, steps: int, device: torch.device
) -> float:
    torch.backends.cudnn.benchmark = True  # as fit() does on CUDA
    model = build_model(spec).to(device=device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = batch.to(device).contiguous(memory_format=torch.channels_last)
    labels = labels.to(device)
    for step in range(steps + 3):  # 3 warm-up steps
        if step == 3:
            synchronize(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * len(batch) / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: time it only once it is done


def pipeline_images_per_s(
    spec: ModelSpec, dataset: Dataset, batch_size: int, steps: int, device: torch.device
) -> float:
    images = torch.from_numpy(read_rows(dataset.train_images, slice(0, batch_size * steps)))
    labels = torch.from_numpy(dataset.train_labels[: batch_size * steps])
    recipe = Recipe(
        epochs=1,
        batch_size=batch_size,
        lr=0.01,
        weight_decay=5e-4,
        label_smoothing=0.0,
        seed=0,
        shift=4,
        flip=True,
        device=device.type,
    )
    fit(build_model(spec), images[: batch_size * 3], labels[: batch_size * 3], dataset.norm, recipe)  # warm-up
    history = fit(build_model(spec), images, labels, dataset.norm, recipe)
    return history[0]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    device = torch.device(args.device)

    results = run_pipeline(load_config(args.config, args.overrides), ArtifactStore(args.artifacts), target="data")
    dataset = load_dataset(results[-1].artifact)
    _, channels, height, width = dataset.train_images.shape
    spec = ModelSpec(args.model, args.width, channels, len(dataset.class_names), (height, width))
    batch = normalize(torch.from_numpy(read_rows(dataset.train_images, slice(0, args.batch_size))), *dataset.norm)
    labels = torch.from_numpy(dataset.train_labels[: args.batch_size])
    bare, pipeline = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        bare.append(bare_images_per_s(spec, batch, labels, args.steps, device))
        pipeline.append(pipeline_images_per_s(spec, dataset, args.batch_size, args.steps, device))
    summary = {
        "model": f"{args.model} width {args.width}",
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "bare_images_per_s": [round(v, 1) for v in bare],
        "pipeline_images_per_s": [round(v, 1) for v in pipeline],
        "median_ratio": round(statistics.median(pipeline) / statistics.median(bare), 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
