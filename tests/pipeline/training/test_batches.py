"""Training and evaluation read a memory-mapped split batch by batch, with the same batches and the same
result as from memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.datasets.artifact import open_images
from pipeline.training import loop
from pipeline.training.batches import pixel_rows
from pipeline.training.loop import Recipe, accuracy, fit

NORM = ([0.4], [0.3])


def data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 1, 8, 8), dtype=np.uint8)
    labels = (images[:, 0, :4].mean(axis=(1, 2)) > images[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    np.save(tmp_path / "train_images.npy", images)
    return images, labels, open_images(tmp_path / "train_images.npy")


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_pixel_rows_of_a_mapped_split_are_the_in_memory_rows(tmp_path):
    images, _, mapped = data(tmp_path)
    index = torch.randperm(90, generator=torch.Generator().manual_seed(0))[:32]
    for rows in (index, slice(80, 120)):
        expected = torch.from_numpy(images)[rows]
        assert torch.equal(pixel_rows(mapped, rows), expected)
        assert torch.equal(pixel_rows(torch.from_numpy(images), rows), expected)


@pytest.mark.parametrize("augment", ["shift", "resized_crop"])
def test_the_same_batches_and_the_same_training_from_a_mapped_split(tmp_path, augment):
    images, labels, mapped = data(tmp_path)
    assert isinstance(mapped, np.memmap)
    recipe = Recipe(3, 16, 0.05, 5e-4, 0.0, seed=3, shift=1, flip=True, augment=augment, device="cpu")
    batches = {}
    for name, source in (("memory", torch.from_numpy(images)), ("mapped", mapped)):
        state = loop._Loop(
            model(), None, source, torch.from_numpy(labels), NORM, recipe, None, None,
            torch.Generator().manual_seed(3), torch.device("cpu"), "test",
        )  # fmt: skip
        order = torch.randperm(90, generator=state.generator)
        batches[name] = [loop._batch(state, order[i : i + 16], slice(None)) for i in range(0, 90, 16)]
    for (x, y), (mx, my) in zip(batches["memory"], batches["mapped"], strict=True):
        assert torch.equal(x, mx) and torch.equal(y, my)

    trained = {}
    for name, source in (("memory", torch.from_numpy(images)), ("mapped", mapped)):
        net = model()
        history = fit(net, source, labels, NORM, recipe, validation=(source, labels))
        trained[name] = (net.state_dict(), [{k: v for k, v in row.items() if "per_s" not in k and k != "seconds"}
                                            for row in history])  # fmt: skip
    memory, mapped_run = trained["memory"], trained["mapped"]
    assert memory[1] == mapped_run[1]
    for key, value in memory[0].items():
        assert torch.equal(value, mapped_run[0][key]), key
    assert accuracy(model(), mapped, labels, NORM) == accuracy(model(), torch.from_numpy(images), labels, NORM)
