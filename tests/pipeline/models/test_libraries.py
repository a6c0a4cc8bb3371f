"""torchvision:NAME and timm:NAME models: names, one-line failures, and each family built, trained a step, pruned,
saved and rebuilt, exported and quantized at 32 px. Nothing is downloaded: every model starts from fresh weights.

The family tests need the optional extra edgeforge[models] and skip, saying why, where it does not import."""

import importlib
import importlib.util
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import libraries
from pipeline.models.factory import build_model, check_model_name, classifier_head, is_user_model, published_width
from pipeline.models.libraries import adapt_input_kernel, import_library, input_convolution, library_of
from pipeline.models.pruning import prune_channels
from pipeline.models.spec import ModelSpec
from pipeline.models.storage import load_model, save_model
from pipeline.runtime.onnx_export import export_onnx
from pipeline.runtime.quantization import QuantSettings, quantize
from pipeline.runtime.sessions import run_batches, session
from pipeline.training.recipes import model_inputs, start_from
from stages.prune import Params


def test_library_prefixes_are_explicit():
    assert library_of("timm:efficientnet_b0") == "timm" and library_of("torchvision:resnet18") == "torchvision"
    for name in ("timm.models:build", "mypackage.models:build", "resnet20"):
        assert library_of(name) is None
    assert is_user_model("mypackage.models:build") and not is_user_model("timm:efficientnet_b0")
    assert published_width("timm:efficientnet_b0") is None  # library models come in their published widths


def test_a_library_that_does_not_import_is_one_line(monkeypatch):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist\n(more lines)")

    monkeypatch.setattr(libraries.importlib, "import_module", broken)
    expected = (
        "teacher.model='torchvision:resnet18' needs torchvision, which does not import here (RuntimeError: operator "
        f"torchvision::nms does not exist); install the torchvision build that matches torch {torch.__version__}: "
        "pip install -c constraints.txt 'edgeforge[models]'"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_model_name("teacher.model", "torchvision:resnet18")
    expected = "install timm and the torchvision build for torch"
    with pytest.raises(ConfigError, match=r"^distill.model='timm:efficientnet_b0' needs timm, which does not import"):
        check_model_name("distill.model", "timm:efficientnet_b0")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_model_name("distill.model", "timm:efficientnet_b0")


def test_a_failed_download_names_the_way_out(monkeypatch):
    """The Hub takes the connection, then the download fails (inside a stand-in for timm's create_model: nothing is
    fetched): the library's own error, and the way out."""
    importable("timm:mobilenetv3_small_050")  # huggingface_hub comes with timm

    def offline(name, pretrained, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(
        libraries.socket, "create_connection", lambda address, timeout: SimpleNamespace(close=lambda: None)
    )
    real = importlib.import_module
    stand_in = SimpleNamespace(create_model=offline)
    monkeypatch.setattr(libraries.importlib, "import_module", lambda name: stand_in if name == "timm" else real(name))
    expected = (
        "teacher.pretrained=true: cannot get timm:resnet18's pretrained weights (OSError: We couldn't connect to "
        "'https://huggingface.co' to load the files); offline, download them where you can and pass the file as "
        "teacher.weights (.safetensors or a state_dict .pt)"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        libraries.pretrained_state_dict("teacher.pretrained", ModelSpec("timm:resnet18", None, 3, 10, (32, 32)))


def offline(monkeypatch) -> list:
    """No connection to anywhere (the Hub's probe included); the addresses tried."""
    tried = []

    def refuse(address, timeout=None, **options):  # as httpcore calls it too
        tried.append(address)
        raise OSError(f"[Errno -2] Name or service not known: {address[0]}")

    monkeypatch.setattr(libraries.socket, "create_connection", refuse)
    return tried


def test_timm_weights_offline_fail_at_once_instead_of_retrying(monkeypatch, tmp_path, caplog):
    """Offline, huggingface_hub retried five times with backoff (47.9 s) before failing; told it is offline, it
    looks in its cache and fails at once. Nothing is fetched: every connection is refused."""
    importable("timm:mobilenetv3_small_050")
    constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    tried = offline(monkeypatch)
    expected = (
        f"distill.pretrained=true: cannot get timm:mobilenetv3_small_050's pretrained weights ({constants.ENDPOINT} "
        "does not answer and they are not in huggingface_hub's cache); offline, download them where you can and "
        "pass the file as distill.weights (.safetensors or a state_dict .pt)"
    )
    spec = ModelSpec("timm:mobilenetv3_small_050", None, 3, 10, (32, 32))
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        libraries.pretrained_state_dict("distill.pretrained", spec)
    assert tried == [("huggingface.co", 443)] and "Retrying" not in caplog.text
    assert constants.HF_HUB_OFFLINE is False  # offline only while loading


def test_hub_offline_set_by_the_user_is_not_probed(monkeypatch):
    importable("timm:mobilenetv3_small_050")  # huggingface_hub comes with timm
    constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    tried = offline(monkeypatch)
    with libraries.hub_offline_unless_reachable() as unreachable:
        assert unreachable == ""  # the user's own offline mode: their cache, their error
    assert tried == [] and constants.HF_HUB_OFFLINE is True


def test_timm_weights_in_the_hub_cache_load_offline(monkeypatch, tmp_path):
    importable("timm:mobilenetv3_small_050")
    import timm.models
    from safetensors.torch import save_file

    constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # The cache's layout as huggingface_hub writes it: refs/main names the snapshot that holds the file.
    repo = timm.models.get_pretrained_cfg("mobilenetv3_small_050").hf_hub_id
    folder = tmp_path / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(0)
    cached = build_model(ModelSpec("timm:mobilenetv3_small_050", None, 3, 1000, (32, 32))).state_dict()
    save_file({name: tensor.contiguous() for name, tensor in cached.items()},
              folder / "snapshots" / ("0" * 40) / "model.safetensors")  # fmt: skip
    offline(monkeypatch)
    spec = ModelSpec("timm:mobilenetv3_small_050", None, 3, 10, (32, 32))
    loaded = libraries.pretrained_state_dict("distill.pretrained", spec)
    assert torch.equal(loaded["conv_stem.weight"], cached["conv_stem.weight"])
    assert loaded["classifier.weight"].shape == (1000, 1024)  # the head keeps the pretraining's class count


def test_the_library_version_is_in_the_stage_key(monkeypatch):
    monkeypatch.setattr(libraries.metadata, "version", lambda name: {"timm": "1.0.31"}[name])
    params = SimpleNamespace(model="timm:efficientnet_b0", weights=None)
    assert model_inputs("teacher", params) == {"model_library": "timm 1.0.31"}


@pytest.mark.parametrize("in_channels", [1, 2, 4])
def test_an_rgb_kernel_adapted_to_other_channels_responds_alike_to_gray_images(in_channels):
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, bias=False)
    adapted = nn.Conv2d(in_channels, 8, 3, bias=False)
    adapted.weight.data = adapt_input_kernel(rgb.weight.data, in_channels)
    gray = torch.rand(2, 1, 6, 6)
    assert torch.allclose(adapted(gray.expand(-1, in_channels, -1, -1)), rgb(gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_a_first_layer_that_cannot_be_adapted_is_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    expected = (
        "model='torchvision:x': cannot adapt its first layer to 1-channel images; use a timm: model (built for any "
        "number of channels) or 3-channel images"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        input_convolution(model, ModelSpec("torchvision:x", None, 1, 10, (32, 32)))


FAMILIES = ["torchvision:resnet18", "timm:mobilenetv3_small_050", "timm:efficientnet_b0"]


def importable(name: str) -> None:
    """Skip where the model's library is not installed (`make test` installs edgeforge[models]); an installed one
    that does not import fails the test."""
    if importlib.util.find_spec(library_of(name)) is None:
        pytest.skip(f"{library_of(name)} is not installed: pip install -c constraints.txt 'edgeforge[models]'")
    import_library("model", name)


def test_an_installed_torchvision_imports_even_without_its_compiled_operators():
    """The registry's torchvision wheel is linked against CUDA torch; beside the CPU build its operators do not load.
    Its classifiers still import and build, and its detection operators fail in torchvision's own words."""
    importable("torchvision:resnet18")
    torchvision = import_library("teacher.model", "torchvision:resnet18")
    model = build_model(ModelSpec("torchvision:resnet18", None, 3, 10, (32, 32)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    if torchvision.extension._has_ops():
        pytest.skip("torchvision's compiled operators load here: no schema stands in for them")
    assert libraries.torchvision_operators_or_their_schemas() is not None
    with pytest.raises(RuntimeError, match="Couldn't load custom C"):
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


def test_torchvision_operators_that_load_are_used_as_they_are(monkeypatch, tmp_path):
    (tmp_path / "__init__.py").touch()
    (tmp_path / "_C.so").touch()
    package = SimpleNamespace(origin=str(tmp_path / "__init__.py"))
    monkeypatch.setattr(libraries.importlib.util, "find_spec", lambda name: package if name == "torchvision" else None)
    loaded = []
    monkeypatch.setattr(libraries.torch.ops, "load_library", loaded.append)
    assert libraries.torchvision_operators_or_their_schemas.__wrapped__() is None
    assert loaded == [tmp_path / "_C.so"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_a_library_family_trains_prunes_rebuilds_exports_and_quantizes(name, tmp_path):
    importable(name)
    spec = ModelSpec(name, None, 1, 10, (32, 32))  # gray images: the first layer is adapted
    torch.manual_seed(0)
    model = build_model(spec)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = classifier_head(model, 10).weight.detach().clone()
    nn.functional.cross_entropy(model.train()(x), y).backward()
    optimizer.step()
    assert not torch.equal(before, classifier_head(model, 10).weight)

    model.eval()
    params_before = sum(p.numel() for p in model.parameters())
    history = prune_channels(model, spec.example_input(), spec.num_classes, Params(ratio=0.5))
    assert sum(p.numel() for p in model.parameters()) < 0.5 * params_before
    assert classifier_head(model, 10).out_features == 10 and model(x).shape == (8, 10)

    save_model(model, spec, tmp_path, pruning_history=history)
    loaded, _ = load_model(tmp_path)  # rebuilt from the spec with fresh weights, then the state_dict: no download
    assert torch.equal(loaded(x), model(x))

    export_onnx(model, spec, tmp_path / "model.onnx", opset=18)
    images = np.random.default_rng(0).standard_normal((4, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert np.abs(run_batches(session(tmp_path / "model.onnx"), images) - expected).max() < 1e-3
    quantize(tmp_path / "model.onnx", tmp_path / "int8.onnx", images, QuantSettings(calibration_batch=4))
    assert run_batches(session(tmp_path / "int8.onnx"), images).shape == (4, 10)


def test_torchvision_pretrained_weights_start_a_gray_model_with_a_new_head(monkeypatch):
    """torchvision's own loading path, with its download replaced by a state_dict made here (nothing fetched)."""
    importable("torchvision:resnet18")
    import torchvision.models._api as api

    torch.manual_seed(0)
    imagenet = build_model(ModelSpec("torchvision:resnet18", None, 3, 1000, (32, 32))).state_dict()
    fetched = []
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda url, **kwargs: fetched.append(url) or imagenet)
    spec = ModelSpec("torchvision:resnet18", None, 1, 10, (32, 32))
    model = build_model(spec)
    starting = SimpleNamespace(weights=None, pretrained=True, reinit_head=False)
    with pytest.raises(ConfigError, match=r"classifier 'fc.weight' has shape \[1000, 512\], the data's 10 classes"):
        start_from(model, spec, "teacher", starting)
    start_from(model, spec, "teacher", SimpleNamespace(weights=None, pretrained=True, reinit_head=True))
    assert fetched and fetched[0].endswith(".pth")
    assert torch.equal(model.conv1.weight, imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    assert model.fc.out_features == 10


def test_timm_pretrained_weights_start_a_gray_model_with_a_new_head(monkeypatch):
    """timm's own loading path (it adapts the input convolution to in_chans), with its hub download replaced by a
    state_dict made here (nothing fetched)."""
    importable("timm:mobilenetv3_small_050")
    import timm.models._builder as builder

    torch.manual_seed(0)
    imagenet = build_model(ModelSpec("timm:mobilenetv3_small_050", None, 3, 1000, (32, 32))).state_dict()
    fetched = []
    monkeypatch.setattr(builder, "load_state_dict_from_hf", lambda *args, **kwargs: fetched.append(args) or imagenet)
    spec = ModelSpec("timm:mobilenetv3_small_050", None, 1, 10, (32, 32))
    model = build_model(spec)
    start_from(model, spec, "distill", SimpleNamespace(weights=None, pretrained=True, reinit_head=True))
    assert fetched
    assert torch.allclose(model.conv_stem.weight, imagenet["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.conv_head.weight, imagenet["conv_head.weight"])
    assert model.classifier.out_features == 10


@pytest.mark.parametrize(
    ("name", "names"),
    [("timm:no_such_net", "timm.list_models()"), ("torchvision:fasterrcnn_resnet50_fpn", "torchvision.models")],
)
def test_a_name_the_library_cannot_build_as_a_classifier_is_one_line(name, names):
    importable(name)
    expected = f"teacher.model='{name}' is not a classifier {library_of(name)} can build; see {names}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_model_name("teacher.model", name)
