"""RandomResizedCrop on batches: torchvision's draws, seeded, bounded; the crop and the flip are exact on
boxes that need no interpolation; evaluation never augments."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.training import loop
from pipeline.training.augment import CROP_RATIO, Augmentation, augment, normalize, resized_crop


def draw(seed: int, n: int = 64, size=(24, 32)) -> Augmentation:
    return Augmentation.draw(n, 4, True, torch.Generator().manual_seed(seed), crop_of=size)


def test_crop_boxes_are_seeded_and_inside_the_image():
    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first.boxes, again.boxes) and torch.equal(first.flipped, again.flipped)
    assert not torch.equal(first.boxes, other.boxes)
    assert first.dy is None and first.dx is None  # the crop replaces the shift
    top, left, h, w = first.boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 24).all() and (left + w <= 32).all()
    assert (h >= 1).all() and (w >= 1).all() and (h * w >= 0.07 * 24 * 32).all()  # >= 8% of the area, rounded
    ratio = w / h
    assert (ratio >= CROP_RATIO[0] * 0.8).all() and (ratio <= CROP_RATIO[1] * 1.25).all()  # rounding at small sizes
    share = first.select(slice(1, None, 2))
    assert torch.equal(share.boxes, first.boxes[1::2])


def test_an_image_where_no_crop_fits_gets_torchvisions_central_fallback():
    # A 1x40 strip: no box of ratio 3/4..4/3 fits, so the fallback clamps the ratio to 4/3 at full height.
    boxes = Augmentation.draw(5, 0, False, torch.Generator().manual_seed(0), crop_of=(1, 40)).boxes
    expected_w = round(1 * CROP_RATIO[1])
    assert boxes.tolist() == [[0.0, math.floor((40 - expected_w) / 2), 1.0, float(expected_w)]] * 5


def test_resized_crop_of_the_whole_image_is_exact_and_flips_mirror():
    images = torch.randint(0, 256, (2, 3, 6, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0.0, 0.0, 6.0, 8.0]] * 2)
    out = resized_crop(images, whole, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], images[0].float())
    torch.testing.assert_close(out[1], images[1].flip(2).float())
    # The left half, stretched twice as wide: every source column appears twice, bilinear between them.
    left = resized_crop(images, torch.tensor([[0.0, 0.0, 6.0, 4.0]] * 2), None)
    assert left.shape == images.shape
    torch.testing.assert_close(left[:, :, :, 1:7:2], (images[..., :3].float() * 0.75 + images[..., 1:4] * 0.25))


def test_augment_applies_the_drawn_crops_the_same_way_every_time():
    images = torch.randint(0, 256, (64, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    draws = draw(3)
    first = augment(images, 4, draws)
    assert torch.equal(first, augment(images, 4, draw(3)))
    assert not torch.equal(first, augment(images, 4, draw(4)))
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert first.min() >= 0 and first.max() <= 255


def test_training_batches_are_cropped_and_evaluation_sees_the_stored_images():
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    recipe = loop.Recipe(1, 16, 0.1, 0.0, 0.0, seed=0, shift=0, flip=True, augment="resized_crop")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 2))
    state = loop._Loop(
        model, None, images.numpy(), torch.zeros(16, dtype=torch.long), norm, recipe, None, None,
        torch.Generator().manual_seed(0), torch.device("cpu"), "test",
    )  # fmt: skip
    x, _ = loop._batch(state, torch.arange(16), slice(None))
    assert not torch.allclose(x, normalize(images, *norm))  # training: cropped and flipped
    logits = loop.predict(model, images.numpy(), norm)
    torch.testing.assert_close(logits, model(normalize(images, *norm)))  # evaluation: never augmented


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_resized_crop_is_the_same_on_cuda_and_cpu():
    images = torch.randint(0, 256, (32, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    draws = draw(6, n=32)
    torch.testing.assert_close(augment(images.cuda(), 4, draws).cpu(), augment(images, 4, draws), atol=1e-3, rtol=0)


def test_an_unknown_augmentation_is_one_line_naming_the_choices():
    from pipeline.errors import ConfigError
    from pipeline.runner import load_config

    with pytest.raises(ConfigError, match=r"distill.augment='crop' is not allowed: expected shift or resized_crop"):
        load_config(overrides=["distill.augment=crop"])
    assert load_config(overrides=["teacher.augment=resized_crop"]).to_dict()["teacher"]["augment"] == "resized_crop"
