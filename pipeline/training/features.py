"""Feature distillation: the student's intermediate feature maps learn from the teacher's, beside the logit loss.

- hint (FitNets, Romero et al. 2015): each student map goes through a learned 1x1 convolution (the adapter) to the
  teacher's channel count and is regressed onto the teacher's map: mean squared error.
- attention (attention transfer, Zagoruyko & Komodakis 2017): each map becomes a spatial attention map, the mean
  over channels of the squared activations, flattened and L2-normalized; the loss is the squared distance between
  the student's and the teacher's maps (summed over pixels, averaged over the batch: in [0, 4] at any resolution,
  where the paper's mean over pixels shrinks with the map and needs a weight of 1000 at 32x32). It needs no
  adapter: the channel counts may differ.

The loss sums over layer pairs and is scaled by the stage's `feature_weight` (1 by default for both: each loss is of
the order of the logit loss at the start; on digits a hint weight of 100, RepDistiller's, made the loss diverge).
Maps of different spatial sizes are average-pooled to the smaller one.

Layer pairs are either named ("teacher_layer:student_layer", the names of `model.named_modules()`), or found: the
stage boundaries of each network, the last layer to output each spatial resolution before the classifier's
pooling (found by running one example through the model), paired from the deepest back: the k-th deepest
boundary of the student with the k-th deepest of the teacher.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

KINDS = ("none", "hint", "attention")
DEFAULT_WEIGHTS = {"hint": 1.0, "attention": 1.0}
DISTILL = "distill"  # prune.feature_loss: the distill stage's feature loss, weight and layers


def stage_boundaries(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the last module to output each spatial resolution (4-D outputs larger than 1x1), shallow to deep."""
    fired: list[tuple[str, tuple[int, int]]] = []

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:] != (1, 1):
                fired.append((name, tuple(output.shape[-2:])))

        return hook

    _run_with_hooks(model, example, [(module, record(name)) for name, module in model.named_modules() if name])
    last: dict[tuple[int, int], str] = {}
    order: list[tuple[int, int]] = []
    for name, size in fired:  # hooks fire as modules finish: a block fires after its layers
        if size not in last:
            order.append(size)
        last[size] = name
    return [last[size] for size in order]


def layer_pairs(
    teacher: nn.Module, student: nn.Module, example: torch.Tensor, named: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(teacher layer, student layer) pairs: the named ones, or the stage boundaries paired from the deepest."""
    if named:
        pairs = []
        for text in named:
            teacher_name, sep, student_name = text.partition(":")
            if not sep or not teacher_name or not student_name:
                raise ConfigError(
                    f"distill.feature_layers entry {text!r} is not allowed: expected TEACHER_LAYER:STUDENT_LAYER with "
                    "names from model.named_modules(), e.g. '3:2'"
                )
            pairs.append((teacher_name, student_name))
    else:
        teacher_layers, student_layers = stage_boundaries(teacher, example), stage_boundaries(student, example)
        count = min(len(teacher_layers), len(student_layers))
        deepest_teacher, deepest_student = (
            teacher_layers[len(teacher_layers) - count :],
            student_layers[len(student_layers) - count :],
        )
        pairs = list(zip(deepest_teacher, deepest_student, strict=True))
    for which, model, names in (
        ("teacher", teacher, [t for t, _ in pairs]),
        ("student", student, [s for _, s in pairs]),
    ):
        known = dict(model.named_modules())
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"distill.feature_layers names {which} layer {name!r}, which the {which} does not have; its "
                    f"stage boundaries are {', '.join(stage_boundaries(model, example)) or 'none'}"
                )
    if not pairs:
        raise ConfigError("distill.feature_loss found no feature maps to pair: set distill.feature_layers")
    return pairs


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squared activations, flattened, L2-normalized."""
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    student, teacher = same_size(student, teacher)
    return (attention_map(student) - attention_map(teacher)).pow(2).sum(1).mean()


def same_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps at the smaller of their spatial sizes (average pooling)."""
    size = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
    resize = lambda x: x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)  # noqa: E731
    return resize(student), resize(teacher)


class FeatureDistillation(nn.Module):
    """The feature loss between a student and a teacher, with hooks that capture both networks' maps.

    Its parameters (the hint adapters) train with the student; `Trainee` puts both in one module, so that
    data-parallel training synchronizes them too.
    """

    def __init__(
        self,
        kind: str,
        weight: float,
        pairs: list[tuple[str, str]],
        teacher_channels: list[int],
        student_channels: list[int],
    ):
        super().__init__()
        self.kind, self.weight, self.pairs = kind, weight, pairs
        self.adapters = (
            nn.ModuleList(
                nn.Conv2d(s, t, 1, bias=False) for s, t in zip(student_channels, teacher_channels, strict=True)
            )
            if kind == "hint"
            else nn.ModuleList()
        )
        self.student_maps: dict[str, torch.Tensor] = {}
        self.teacher_maps: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        """Capture the paired layers' outputs on every forward of either network (until `detach`)."""
        teacher_modules, student_modules = dict(teacher.named_modules()), dict(student.named_modules())
        for teacher_name, student_name in self.pairs:
            self._handles.append(
                teacher_modules[teacher_name].register_forward_hook(self._keep(self.teacher_maps, teacher_name))
            )
            self._handles.append(
                student_modules[student_name].register_forward_hook(self._keep(self.student_maps, student_name))
            )

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.student_maps.clear()
        self.teacher_maps.clear()

    @staticmethod
    def _keep(maps: dict[str, torch.Tensor], name: str):
        def hook(module, inputs, output):
            maps[name] = output

        return hook

    def forward(self) -> torch.Tensor:
        """The weighted feature loss of the maps captured by the last forward of both networks."""
        losses = []
        for index, (teacher_name, student_name) in enumerate(self.pairs):
            student, teacher = self.student_maps[student_name].float(), self.teacher_maps[teacher_name].float()
            if self.kind == "hint":
                student, teacher = same_size(self.adapters[index](student), teacher)
                losses.append(F.mse_loss(student, teacher))
            else:
                losses.append(attention_loss(student, teacher))
        return self.weight * torch.stack(losses).sum()


def build(
    kind: str,
    weight: float | None,
    named: tuple[str, ...],
    teacher: nn.Module,
    student: nn.Module,
    example: torch.Tensor,
) -> FeatureDistillation | None:
    """The feature distillation `kind` between these two networks (None for "none")."""
    if kind == "none":
        return None
    pairs = layer_pairs(teacher, student, example, named)
    channels = {}
    for which, model in (("teacher", teacher), ("student", student)):
        shapes = _output_shapes(model, example, [t if which == "teacher" else s for t, s in pairs])
        channels[which] = [shape[1] for shape in shapes]
    weight = DEFAULT_WEIGHTS[kind] if weight is None else weight
    return FeatureDistillation(kind, weight, pairs, channels["teacher"], channels["student"])


def build_for(section, teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> FeatureDistillation | None:
    """`build` from a config section's (or a recorded one's) feature_loss, feature_weight and feature_layers."""
    layers = tuple(section.feature_layers or ())
    return build(section.feature_loss, section.feature_weight, layers, teacher, student, example)


def _output_shapes(model: nn.Module, example: torch.Tensor, names: list[str]) -> list[torch.Size]:
    modules, shapes = dict(model.named_modules()), {}

    def record(name: str):
        def hook(module, inputs, output):  # returns None: a hook that returns a value replaces the output
            shapes.setdefault(name, output.shape)

        return hook

    _run_with_hooks(model, example, [(modules[n], record(n)) for n in names])
    for name in names:
        if name not in shapes or len(shapes[name]) != 4:
            raise ConfigError(f"distill.feature_layers: layer {name!r} does not output a feature map (N, C, H, W)")
    return [shapes[n] for n in names]


class Trainee(nn.Module):
    """The student and its feature-distillation parameters as one module: forward returns the logits and the
    feature loss (of the teacher maps captured just before), so data-parallel training reduces every gradient."""

    def __init__(self, student: nn.Module, features: FeatureDistillation):
        super().__init__()
        self.student, self.features = student, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.student(x)
        return logits, self.features()


def _run_with_hooks(model: nn.Module, example: torch.Tensor, hooks: list[tuple[nn.Module, object]]) -> None:
    """One forward pass of `example` in eval mode with forward `hooks` attached, then the model as it was."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def with_distill_features(params: Any, distill_params: dict[str, Any]) -> Any:
    """`params` with feature_loss distill resolved to the distill stage's kind, weight and layers (where unset)."""
    if params.feature_loss != DISTILL:
        return params
    layers = params.feature_layers or distill_params.get("feature_layers")
    return dataclasses.replace(
        params,
        feature_loss=distill_params.get("feature_loss", "none"),
        feature_weight=params.feature_weight or distill_params.get("feature_weight"),
        feature_layers=tuple(layers) if layers else None,
    )


def described(kind: str, weight: float | None, layers: tuple[str, ...] | None) -> dict[str, Any] | None:
    """A fine-tune's feature loss as its record shows it ({kind, weight, layers}), None without one."""
    if kind == "none":
        return None
    return {"kind": kind, "weight": weight or DEFAULT_WEIGHTS[kind], "layers": list(layers or ())}
