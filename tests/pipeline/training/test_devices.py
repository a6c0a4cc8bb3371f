"""The training data path on every device: augmentation draws are device-independent, and on CUDA the uint8
batches travel through pinned memory and train the model (skipped where torch sees no CUDA device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.errors import StageError
from pipeline.models.factory import build_model
from pipeline.models.spec import ModelSpec
from pipeline.training.augment import Augmentation, augment
from pipeline.training.devices import PinnedStaging, resolve_device
from pipeline.training.loop import Recipe, accuracy, fit

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    raw = load_digits()
    images = torch.from_numpy((raw.images * 15).astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(raw.target.astype(np.int64))


def test_augmentation_draws_select_a_share_of_the_batch():
    draws = Augmentation.draw(10, 2, True, torch.Generator().manual_seed(0))
    share = draws.select(slice(1, None, 2))
    assert torch.equal(share.dy, draws.dy[1::2]) and torch.equal(share.flipped, draws.flipped[1::2])
    assert Augmentation.draw(10, 0, False, torch.Generator()) == Augmentation(None, None, None)


def test_augment_shifts_within_the_padding_and_flips_what_was_drawn():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    draws = Augmentation(dy=torch.tensor([1, 2]), dx=torch.tensor([1, 0]), flipped=torch.tensor([False, True]))
    out = augment(images, 1, draws)
    assert torch.equal(out[0], images[0])  # dy = dx = shift: no translation
    # dy 2: one row up, padding below; dx 0: one column right, padding on the left; then flipped left-right.
    assert torch.equal(out[1, :, :3, :3], images[1, :, 1:, :3].flip(2))
    assert (out[1, :, 3, :] == 0).all() and (out[1, :, :, 3] == 0).all()


@cuda
def test_augment_is_the_same_on_cuda_and_cpu():
    images, _ = digits()
    draws = Augmentation.draw(len(images), 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(augment(images.cuda(), 2, draws).cpu(), augment(images, 2, draws))


@cuda
def test_pinned_staging_delivers_every_tensor_of_every_batch():
    images, labels = digits()
    staging = PinnedStaging()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = [order[i : i + 64] for i in range(0, len(images), 64)]  # the last one is smaller
    moved = [staging.to_device([images[index], labels[index], None], torch.device("cuda")) for index in batches]
    for index, (pixels, targets, nothing) in zip(batches, moved, strict=True):  # buffers were reused meanwhile
        assert pixels.is_cuda and torch.equal(pixels.cpu(), images[index])
        assert torch.equal(targets.cpu(), labels[index]) and nothing is None


@cuda
def test_fit_on_cuda_trains_and_hands_back_a_cpu_model():
    images, labels = digits()
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 8, 1, 10, (8, 8))
    model = build_model(spec)
    recipe = Recipe(
        epochs=4,
        batch_size=64,
        lr=0.1,
        weight_decay=5e-4,
        label_smoothing=0.0,
        seed=0,
        shift=1,
        flip=False,
        device="cuda",
    )
    norm = ([images.float().mean().item() / 255], [images.float().std().item() / 255])
    history = fit(model, images, labels, norm, recipe, stage="cuda")
    assert [row["images"] for row in history] == [len(images)] * 4
    assert next(model.parameters()).device.type == "cpu"
    assert accuracy(model, images, labels, norm) > 0.9


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for device in ("cuda", "auto"):
        with pytest.raises(StageError, match=r"2 processes on this machine but torch sees 1 GPU\(s\)"):
            resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_device("auto") == torch.device("cuda")
