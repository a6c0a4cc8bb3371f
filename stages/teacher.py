"""teacher: train the large model whose softened logits the student learns from.

It can start from weights the user brings (`teacher.weights`, a .safetensors or state_dict .pt file) or a library's
pretrained weights (`teacher.pretrained`), and then be fine-tuned, or, with `teacher.epochs: 0`, used as it is:
evaluated and saved, never trained.

With `teacher.onnx` the teacher is an ONNX classifier from any framework, used as it is: the file is loaded through
the checks `edgeforge bench` applies to files it is handed, its signature is checked against the data, and it is
saved wrapped behind the conversion from the pipeline's input to the preprocessing it expects (layout, scale, mean,
std: pipeline/runtime/onnx_teacher.py). Its accuracy is onnxruntime's; distillation runs it in onnxruntime.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.cache import CHECKPOINTS, Artifact
from pipeline.datasets.artifact import Dataset, load_dataset
from pipeline.errors import ConfigError, StageError, first_line, require
from pipeline.models.factory import build_model, check_model_name, count_macs_and_params
from pipeline.models.storage import save_model
from pipeline.runtime.predict import normalize
from pipeline.training.loop import fit
from pipeline.training.onnx_teacher import FILE as ONNX_FILE
from pipeline.training.onnx_teacher import OnnxTeacher
from pipeline.training.recipes import (
    check_training_params,
    model_inputs,
    model_label,
    recipe_for,
    resolve_width,
    scored,
    spec_for,
    start_from,
)

NAME = "teacher"
SECTION = "teacher"
VERSION = 2
INPUTS = ("data",)
TRAINS = True  # every rank of a torchrun launch trains it, data-parallel
OUTPUTS = ("model.pt", "model.json")
ONNX_OUTPUTS = (ONNX_FILE,)  # with teacher.onnx
ONNX_LAYOUTS = ("nchw", "nhwc")  # teacher.onnx_layout
ONNX_KINDS = ("logits", "probabilities")  # teacher.onnx_output


@dataclasses.dataclass(frozen=True)
class Params:
    # cnn, mlp, resnet8..resnet110, resnet8_s2..resnet20_s2 (stride-2 stem), mobilenetv2, torchvision:NAME,
    # timm:NAME, or package.module:function
    model: str = "cnn"
    # cnn: first block channels; mlp: hidden units; resnet*/mobilenetv2: stem channels. Choosing a model without a
    # width (or width null) gives that architecture's published width: resnets 16, mobilenetv2 32, cnn 32, mlp 1200.
    # Library and user models come in their own widths.
    width: int | None = dataclasses.field(default=32, metadata={"follows": "model"})
    epochs: int = 30  # 0: use the weights as they are (needs weights or pretrained)
    # Start from these weights: a .safetensors file or a state_dict .pt (read with weights_only=True)
    weights: str | None = dataclasses.field(default=None, metadata={"path": True})
    pretrained: bool = False  # start from the library's own pretrained weights (torchvision: or timm: models)
    reinit_head: bool = False  # weights whose classifier has another class count: train a new classifier
    batch_size: int = 64
    lr: float = 0.1  # peak of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    shift: int = 1  # random translation in pixels
    flip: bool = False  # random horizontal flips
    augment: str = "shift"  # shift (small images) or resized_crop (RandomResizedCrop, for full-size images)
    seed: int = 0
    schedule: str = "onecycle"  # learning rate per step: onecycle or cosine
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    # An ONNX classifier (from Keras/TensorFlow, JAX, PyTorch...) as the teacher, used as it is (epochs 0); the keys
    # above that build or train a model do not apply to it
    onnx: str | None = dataclasses.field(default=None, metadata={"path": True})
    onnx_layout: str = "nchw"  # the input layout the ONNX teacher expects: nchw or nhwc
    onnx_scale: float = 1 / 255  # it expects pixels (0..255) times this: 1/255 for [0, 1], 1 for [0, 255]...
    onnx_mean: tuple[float, ...] | None = None  # ...minus this per channel (units of pixel * scale; null: the data's)
    onnx_std: tuple[float, ...] | None = None  # ...divided by this (null: the data's std, as the student sees it)
    onnx_output: str = "logits"  # what it outputs: logits, or probabilities (a softmax at its end)

    def __post_init__(self):
        check_training_params("teacher", self, min_epochs=0)
        check_model_name("teacher.model", self.model)
        require(
            self.epochs >= 1 or self.weights is not None or self.pretrained or self.onnx is not None,
            "teacher.epochs",
            self.epochs,
            "an integer >= 1, or 0 with teacher.weights, teacher.pretrained or teacher.onnx (a teacher used as it is)",
        )
        check_onnx_params(self)
        resolve_width(self)


def check_onnx_params(params: Params) -> None:
    """An ONNX teacher is used as it is: nothing may say to train it or where else its weights come from."""
    layouts = " or ".join(ONNX_LAYOUTS)
    require(params.onnx_layout in ONNX_LAYOUTS, "teacher.onnx_layout", params.onnx_layout, layouts)
    kinds = " or ".join(ONNX_KINDS)
    require(params.onnx_output in ONNX_KINDS, "teacher.onnx_output", params.onnx_output, kinds)
    require(params.onnx_scale > 0, "teacher.onnx_scale", params.onnx_scale, "a number > 0, like 1/255 or 1")
    positive = params.onnx_std is None or all(s > 0 for s in params.onnx_std)
    require(positive, "teacher.onnx_std", params.onnx_std, "null or numbers > 0")
    if params.onnx is None:
        for field in dataclasses.fields(params):
            if field.name.startswith("onnx_") and getattr(params, field.name) != field.default:
                raise ConfigError(f"teacher.{field.name} describes an ONNX teacher: set teacher.onnx, or remove it")
        return
    if params.epochs != 0:
        raise ConfigError(
            f"teacher.onnx is used as it is (edgeforge does not train ONNX models): set teacher.epochs=0 "
            f"(now {params.epochs})"
        )
    for key in ("weights", "pretrained", "reinit_head"):
        if getattr(params, key):
            raise ConfigError(f"teacher.onnx and teacher.{key} both say what the teacher is: set only one")


def outputs(params: Params) -> tuple[str, ...]:
    return OUTPUTS if params.onnx is None else ONNX_OUTPUTS


def fingerprint(params: Params, state_dir: Path) -> dict[str, Any]:
    """A user model's source, the model library's version, the weights file or the ONNX file (and its external
    data) are inputs: a change re-runs it."""
    if params.onnx is not None:
        from pipeline.runtime import onnx_teacher  # imports onnx: see run_onnx

        return {"onnx_sha256": onnx_teacher.source_sha256(Path(params.onnx))}
    return model_inputs(SECTION, params)


def run(params: Params, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(inputs["data"])
    if params.onnx is not None:
        return run_onnx(params, dataset, out_dir)
    spec = spec_for(dataset, params.model, params.width)
    validation = dataset.val_images, dataset.val_labels
    torch.manual_seed(params.seed)
    model = build_model(spec)
    start = start_from(model, spec, SECTION, params)
    history = []
    if params.epochs > 0:
        history = fit(
            model,
            dataset.train_images,
            dataset.train_labels,
            dataset.norm,
            recipe_for(params, params.epochs),
            stage=NAME,
            checkpoint=out_dir / CHECKPOINTS / "teacher.pt",
            validation=validation,
        )
    scores = scored(model, dataset)
    trained = "trained" if start == "fresh weights" else "fine-tuned"
    save_model(model, spec, out_dir)
    macs, n_params = count_macs_and_params(model, spec)
    return {
        **scores,
        "params": n_params,
        "macs": macs,
        "history": history,
        "start": start,
        "summary": f"{model_label(params.model, params.width)} {start}"
        + (", used as it is" if params.epochs == 0 else f", {trained} {params.epochs} epoch(s)")
        + f", {n_params:,} params, validation accuracy {scores['validation_accuracy']:.4f}",
    }


def run_onnx(params: Params, dataset: Dataset, out_dir: Path) -> dict[str, Any]:
    """Check the user's ONNX file, save it wrapped behind its preprocessing, and score it in onnxruntime."""
    # Imported here: onnx takes half a second to import, and only an ONNX teacher needs it (not every CLI start).
    from pipeline.runtime import onnx_counts, onnx_teacher
    from pipeline.runtime.onnx_files import input_signature, output_signature

    source = Path(params.onnx)
    image_shape = tuple(dataset.train_images.shape[1:])
    settings = onnx_teacher.Settings(
        params.onnx_layout, params.onnx_scale, params.onnx_mean, params.onnx_std, params.onnx_output
    )
    classes = len(dataset.class_names)
    model, wrapped, pre = onnx_teacher.prepare(
        source, out_dir / ONNX_FILE, settings, dataset.norm, image_shape, classes
    )
    scores = onnx_scores(source, out_dir / ONNX_FILE, dataset)
    n_params, macs = onnx_counts.count_params(model), onnx_counts.count_macs(wrapped)
    return {
        **scores,
        "params": n_params,
        "macs": macs,
        "history": [],
        "start": f"from {source.name}",
        "onnx": {
            "file": source.name,
            "sha256": onnx_teacher.source_sha256(source),
            "input": [list(value) for value in input_signature(model)],
            "output": [list(value) for value in output_signature(model)],
            "input_shape": list(image_shape),  # of the wrapped model, after the batch: what the pipeline feeds
            "preprocessing": {**dataclasses.asdict(pre), "mean": list(pre.mean), "std": list(pre.std)},
            "preprocessing_text": pre.describe(),
        },
        "summary": f"ONNX {source.name} used as it is ({pre.describe()}), {n_params:,} params, "
        f"validation accuracy {scores['validation_accuracy']:.4f} (onnxruntime)",
    }


def onnx_scores(source: Path, wrapped: Path, dataset: Dataset) -> dict[str, float]:
    """Validation and test accuracy in onnxruntime, on the images preprocessed as bench and predict.py do."""
    try:
        teacher = OnnxTeacher(wrapped)
        scores = {}
        for split, images, labels in (
            ("validation", dataset.val_images, dataset.val_labels),
            ("test", dataset.test_images, dataset.test_labels),
        ):
            logits = teacher.predict(normalize(images, *dataset.norm))
            if logits.shape != (len(labels), len(dataset.class_names)):
                raise ConfigError(
                    f"{source}: gives outputs of shape {list(logits.shape)} for {len(labels)} images, but the data has "
                    f"{len(dataset.class_names)} classes: the teacher must output logits of shape [batch, classes]"
                )
            scores[f"{split}_accuracy"] = float((logits.argmax(1) == labels).mean())
    except ConfigError:
        raise
    except Exception as error:  # onnxruntime's own errors (an unsupported op, a shape it rejects) have no common type
        raise StageError(f"teacher: onnxruntime cannot run {source}: {first_line(error)}") from error
    return scores
