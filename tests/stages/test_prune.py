import torch

from pipeline.models import ModelSpec, build_model, count_macs_and_params, load_model, save_model
from stages.prune import Params, prune_channels


def test_pruning_removes_channels_and_the_model_still_works():
    spec = ModelSpec("cnn", 8, 1, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    macs, params = count_macs_and_params(model, spec)
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))
    pruned_macs, pruned_params = count_macs_and_params(model, spec)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16]  # physically removed, half of 8/16/32
    assert pruned_params < params * 0.4 and pruned_macs < macs * 0.4
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert history


def test_round_to_keeps_channel_counts_a_multiple_and_replays(tmp_path):
    spec = ModelSpec("resnet8", 16, 3, 10, (8, 8))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.375, round_to=8))
    counts = {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert counts and all(count % 8 == 0 for count in counts) and max(counts) < 64  # 64 -> 40 unrounded
    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.eval()(x), model(x))


def test_pruned_model_round_trips_through_state_dict_and_history(tmp_path):
    spec = ModelSpec("mlp", 32, 1, 10, (8, 8))
    model = build_model(spec).eval()
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.25))
    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, loaded_spec = load_model(tmp_path)
    x = torch.randn(5, 1, 8, 8)
    assert loaded_spec == spec
    assert torch.equal(loaded(x), model(x))
    assert loaded[1].out_features == 24


def test_prune_stage_reduces_params_and_macs_and_keeps_accuracy(tiny_run):
    _, results = tiny_run
    metrics = results["prune"].artifact.metrics
    assert metrics["params"] < metrics["params_before"] * 0.4
    assert metrics["macs"] < metrics["macs_before"] * 0.4
    assert metrics["test_accuracy"] > 0.8
    exported = results["export"].artifact
    assert exported.file("pruned.onnx").stat().st_size < exported.file("student.onnx").stat().st_size
