"""Classify image files with an edgeforge edge model: the release's predict.py.

    python predict.py IMAGE_OR_FOLDER [...] [--top K] [--json]

Needs only onnxruntime, numpy and Pillow. It reads deploy.json beside it (or --deploy): the model file, the input
shape, the preprocessing, the class names and the session options measured fastest for this model, and classifies
each image with exactly the preprocessing the pipeline evaluated the model with:

1. decode with Pillow; 16-bit grayscale scaled to 8 bits, palette transparency resolved, alpha dropped;
2. grayscale ("L") for a one-channel model, RGB for a three-channel one;
3. when deploy.json says the data was resized: the shorter side resized (bilinear) to floor(size / crop_fraction),
   then the central size x size square (torchvision's evaluation transform); else the image must already have the
   model's input size;
4. NCHW float32: (pixel * (1 / (255 * std)) + (-mean / std)), per channel, in float32 as written here.

Folders are searched recursively for .jpg, .jpeg and .png files, in sorted order. One line per image (or one JSON
object per line with --json: its path and top classes with their probabilities).

This file is edgeforge's pipeline/runtime/predict.py, copied into every release; `edgeforge predict` runs the same
code, and the bench stage preprocesses the validation and test images with `normalize` below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

EXTENSIONS = (".jpg", ".jpeg", ".png")
BATCH = 256


def normalize(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 NCHW pixels to the model's float32 input: pixel * (1 / (255 * std)) + (-mean / std) per channel."""
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(1, -1, 1, 1)
    shift = np.array([-m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(1, -1, 1, 1)
    return pixels.astype(np.float32) * scale + shift


class Normalized:
    """uint8 NCHW images seen as the model's float32 inputs, normalized a slice at a time as they are read (a large or
    memory-mapped set is never converted to float whole)."""

    def __init__(self, pixels: np.ndarray, mean: list[float], std: list[float]):
        self.pixels, self.mean, self.std = pixels, mean, std
        self.shape = pixels.shape

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, rows: slice) -> np.ndarray:
        pixels = self.pixels
        if isinstance(pixels, np.memmap) and pixels.filename is not None:
            # A mapping of this slice's own, closed after: pages read through one long-lived mapping would stay in
            # this process's resident memory (pipeline/datasets/artifact.py read_rows does the same).
            whole = np.load(pixels.filename, mmap_mode="r", allow_pickle=False)
            if (whole.shape, whole.strides, whole.dtype) == (pixels.shape, pixels.strides, pixels.dtype):
                pixels = whole
        return normalize(np.asarray(pixels[rows]), self.mean, self.std)


def resize_center_crop(image, size: int, crop_fraction: float):
    """The data stage's pipeline/datasets/imagefolder.py resize_center_crop, repeated here so this file stands alone
    (a test checks the two agree)."""
    from PIL import Image

    width, height = image.size
    short = math.floor(size / crop_fraction)
    resized = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.BILINEAR)
    left, top = int(round((resized[0] - size) / 2.0)), int(round((resized[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def decode(path: Path, channels: int, size: list[int], resize: bool, crop_fraction: float = 1.0) -> np.ndarray:
    """One image as (channels, height, width) uint8, decoded as the pipeline's data stage decodes image folders."""
    from PIL import Image  # here: the device runner (pipeline/runtime/device.py) uses normalize without Pillow

    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit: 0..65535 to 0..255, not clipped
            pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
            image = Image.fromarray(((pixels + 128) // 257).astype(np.uint8))
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("L" if channels == 1 else "RGB")
        height, width = size
        if resize:
            image = resize_center_crop(image, height, crop_fraction)  # the data stage stores square images
        elif image.size != (width, height):
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]} pixels; the model takes {width}x{height}")
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def image_files(targets: list[str]) -> list[Path]:
    files = []
    for target in map(Path, targets):
        if target.is_dir():
            files += sorted(p for p in target.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        elif target.is_file():
            files.append(target)
        else:
            raise FileNotFoundError(f"{target} is not an image file or a folder")
    return files


def load(deploy_path: Path) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """The session, with the shipped options, and the deployment description; the model must be the one deploy.json
    names (its sha256), not a file edited or swapped since."""
    deploy = json.loads(deploy_path.read_text())
    model = deploy_path.parent / deploy["model"]
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest != deploy["sha256"]:
        raise ValueError(
            f"{model} has sha256 {digest[:12]}, but deploy.json names {deploy['sha256'][:12]}: copy the release again"
        )
    record = deploy["session_options"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = record["intra_op_num_threads"]
    options.inter_op_num_threads = record["inter_op_num_threads"]
    options.execution_mode = getattr(ort.ExecutionMode, record["execution_mode"])
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, record["graph_optimization_level"])
    for key, value in record["session_config"].items():
        options.add_session_config_entry(key, value)
    providers = [tuple(entry) for entry in deploy.get("providers", [["CPUExecutionProvider", {}]])]
    if providers[0][0] not in ort.get_available_providers():
        raise ValueError(
            f"the model was measured on {providers[0][0]}, which this onnxruntime lacks: install the onnxruntime "
            "build that has it"
        )
    return ort.InferenceSession(str(model), sess_options=options, providers=providers), deploy


def predict(files: list[Path], session: ort.InferenceSession, deploy: dict[str, Any], top: int) -> list[dict]:
    """Per image: its path and the `top` classes with their softmax probabilities, most likely first."""
    prep, shape = deploy["preprocessing"], deploy["input"]["shape"]
    rows = []
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        crop = prep.get("crop_fraction", 1.0)
        pixels = np.stack([decode(f, shape[1], shape[2:], prep["resize"], crop) for f in chunk])
        logits = session.run(
            [deploy["output"]["name"]], {deploy["input"]["name"]: normalize(pixels, prep["mean"], prep["std"])}
        )[0]
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        for path, row in zip(chunk, probabilities, strict=True):
            best = np.argsort(-row, kind="stable")[:top]
            classes = [{"class": deploy["classes"][i], "index": int(i), "probability": float(row[i])} for i in best]
            rows.append({"path": str(path), "top": classes})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with the edge model (onnxruntime).")
    parser.add_argument("targets", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--top", type=int, default=1, help="how many classes to list per image (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--deploy", type=Path, default=Path(__file__).with_name("deploy.json"))
    args = parser.parse_args(argv)
    try:
        session, deploy = load(args.deploy)
        rows = predict(image_files(args.targets), session, deploy, max(1, args.top))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(row["path"], " ".join(f"{c['class']} {c['probability']:.4f}" for c in row["top"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
