"""Peak memory of the data path over a set of several GB: the data stage and one training epoch, each in a fresh
process, against the size of the stored set.

It writes a synthetic image folder of JPEGs (smooth random images of mixed sizes and aspect ratios) under --work,
runs the data stage on it at --image-size (decode, resize and center-crop, split, hash, publish), then trains a
tiny convolutional net for one epoch over the memory-mapped training split with random-resized-crop and flips
(pipeline.training.loop.fit), and, for comparison, reads the same epoch's batches through one long-lived mapping
of the split (what `torch.from_numpy(dataset.train_images)` on a memory-mapped array would do). Each phase reports
its process's peak resident memory (VmHWM), the largest peak of its worker processes, and, at its end, the
anonymous and file-backed parts (RssAnon, RssFile). The work folder is removed at the end unless --keep.

    python benchmarks/memmap_memory.py --images 20000 --image-size 224 --work /tmp/edgeforge-memmap
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def memory() -> dict[str, float]:
    """VmHWM (peak resident), VmRSS, RssAnon and RssFile of this process, and the largest peak of its finished
    child processes (the data stage's decoding workers), in MiB."""
    fields = {"children_max_rss": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def write_folder(root: Path, images: int, seed: int) -> None:
    """`images` JPEGs in train/<class>/, 200-400 px a side; smooth content, so they compress like photos do."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(images):
        width, height = (int(v) for v in rng.integers(200, 401, 2))
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        folder = root / "train" / f"class{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def phase_data(work: Path, image_size: int) -> dict:
    from pipeline.cache import ArtifactStore
    from pipeline.runner import load_config, run_pipeline

    overrides = ["data.name=imagefolder", f"data.root={work / 'folder'}", f"data.image_size={image_size}"]
    started = time.perf_counter()
    artifact = run_pipeline(load_config(overrides=overrides), ArtifactStore(work / "artifacts"), target="data")[-1]
    seconds = time.perf_counter() - started
    path = artifact.artifact.path
    sizes = {f.name: f.stat().st_size for f in path.glob("*_images.npy")}
    return {"seconds": round(seconds, 1), "artifact": str(path), "split_bytes": sizes, "memory": memory()}


def phase_train(artifact: Path, batch_size: int, through_one_mapping: bool) -> dict:
    import torch

    from pipeline.cache import Artifact
    from pipeline.datasets.artifact import load_dataset
    from pipeline.training.loop import Recipe, fit

    manifest = json.loads((artifact / "manifest.json").read_text())
    dataset = load_dataset(Artifact("data", manifest["key"], artifact, manifest))
    images, labels = dataset.train_images, dataset.train_labels
    started = time.perf_counter()
    if through_one_mapping:  # every batch read through the same mapping: its pages stay mapped and resident
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).numpy()
        for start in range(0, len(images), batch_size):
            np.asarray(images[np.sort(order[start : start + batch_size])]).sum()
        history = None
    else:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, CLASSES),
        )
        recipe = Recipe(1, batch_size, 0.05, 5e-4, 0.0, seed=0, shift=0, flip=True, augment="resized_crop")
        history = fit(model, images, labels, dataset.norm, recipe, stage="bench")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "images": len(images),
        "images_per_s": None if history is None else round(history[0]["images_per_s"], 1),
        "memory": memory(),
    }


def run_phase(*arguments: str) -> dict:
    """One phase in a fresh interpreter, so its VmHWM is its own."""
    answer = subprocess.run(
        [sys.executable, __file__, "--phase", *arguments], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(answer.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeforge-memmap"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (JPEGs and artifacts)")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kind, *rest = args.phase
        if kind == "data":
            print(json.dumps(phase_data(Path(rest[0]), int(rest[1]))))
        else:
            print(json.dumps(phase_train(Path(rest[0]), int(rest[1]), kind == "one-mapping")))
        return
    try:
        started = time.perf_counter()
        write_folder(args.work / "folder", args.images, seed=0)
        jpeg_bytes = sum(f.stat().st_size for f in (args.work / "folder").rglob("*.jpg"))
        report = {"images": args.images, "image_size": args.image_size, "jpeg_bytes": jpeg_bytes}
        report["write_folder_seconds"] = round(time.perf_counter() - started, 1)
        report["data_stage"] = run_phase("data", str(args.work), str(args.image_size))
        artifact = report["data_stage"]["artifact"]
        report["train_epoch"] = run_phase("train", artifact, str(args.batch_size))
        report["one_long_lived_mapping"] = run_phase("one-mapping", artifact, str(args.batch_size))
        report["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        report["cores"] = os.cpu_count()
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
