import numpy as np
import pytest
import torch
from torch import nn

from pipeline.datasets.artifact import Dataset
from pipeline.search.prune_layers import Group, candidate_counts, greedy
from pipeline.search.prune_scores import ValidationScores, recalibrate_batchnorm

NORM = ([0.5], [0.25])


def dataset(n=40, seed=0):
    """Two classes told apart by the mean brightness of 1x4x4 images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = (rng.integers(0, 100, (n, 1, 4, 4)) + 150 * labels[:, None, None, None]).astype(np.uint8)
    return Dataset(images, labels, images[:0], labels[:0], images, labels, ["dark", "bright"], *NORM)


def brightness_model():
    """Conv (4 channels) -> BN -> mean -> linear: channel 0 carries the brightness, the others nothing."""
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0] = 1.0
        model[0].bias.zero_()
        model[4].weight.zero_()
        model[4].weight[1, 0], model[4].weight[0, 0] = 1.0, -1.0
        model[4].bias.zero_()
    return model


def test_batchnorm_statistics_are_re_estimated_on_the_images_and_the_model_is_left_in_eval_mode():
    model = brightness_model()
    model[1].momentum = 0.3
    images = torch.from_numpy(dataset().train_images)
    recalibrate_batchnorm(model, images, NORM)
    with torch.no_grad():
        features = model[0]((images.float() / 255 - 0.5) / 0.25)
    assert model[1].running_mean == pytest.approx(features.mean((0, 2, 3)), abs=1e-5)
    # 40 images in batches of 64: one batch, so the unbiased variance of that batch
    assert model[1].running_var == pytest.approx(features.var((0, 2, 3), unbiased=True), rel=1e-4)
    assert model[1].momentum == 0.3 and not model.training and not model[1].training


def test_a_step_costs_the_validation_accuracy_it_loses_per_ms_and_each_configuration_is_scored_once():
    data = dataset()
    pruned = []

    def prune(model, channels):  # "pruning" group "signal" below 4 channels silences the channel that carries it
        pruned.append(dict(channels))
        if channels["signal"] < 4:
            with torch.no_grad():
                model[0].weight[0] = 0.0

    scores = ValidationScores(brightness_model(), data, seed=0, prune=prune)
    full = {"signal": 4, "noise": 4}
    assert scores(full)["accuracy"] == 1.0
    assert scores({"signal": 2, "noise": 4})["accuracy"] == pytest.approx(np.mean(data.val_labels == 0))
    signal, noise = Group("signal", (4, 2), (1.0,) * 4), Group("noise", (4, 2), (1.0,) * 4)
    accuracy_lost, loss_added = scores.cost(signal, full, 2, saved=0.5)
    assert accuracy_lost == pytest.approx((1.0 - np.mean(data.val_labels == 0)) / 0.5) and loss_added > 0
    assert scores.cost(noise, full, 2, saved=0.5) == (0.0, 0.0)
    assert len(pruned) == 3 and scores.summary()["scored"] == 3  # the full configuration was scored once
    # The greedy search takes the step that loses nothing, although both save the same milliseconds.
    table = {"signal": {4: 1.0, 2: 0.5}, "noise": {4: 1.0, 2: 0.5}}
    assert greedy([signal, noise], table, full, 0.6, scores.cost) == {"signal": 4, "noise": 2}


def test_the_magnitude_cost_would_have_taken_the_other_step():
    # The same two groups, where the channels that carry the signal have the smaller weights.
    signal = Group("signal", candidate_counts(16, 8), (0.1,) * 16)
    noise = Group("noise", candidate_counts(16, 8), (2.0,) * 16)
    table = {"signal": {16: 1.0, 8: 0.5}, "noise": {16: 1.0, 8: 0.5}}
    assert greedy([signal, noise], table, {"signal": 16, "noise": 16}, 0.6) == {"signal": 8, "noise": 16}
