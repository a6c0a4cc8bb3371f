from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.runner import load_config
from stages import prune

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml").to_dict() == load_config().to_dict()


def test_yaml_then_set_overrides(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("teacher:\n  epochs: 3\nprune:\n  ratio: 0.25\n")
    config = load_config(config_file, ["prune.ratio=0.75", "bench.batch_sizes=[1, 4]"])
    assert isinstance(config, Config)
    assert config.section("teacher").epochs == 3
    assert config.section("prune").ratio == 0.75
    assert config.section("bench").batch_sizes == (1, 4)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(overrides=["distill.temperature=2"]).section("distill").temperature == 2.0
    with pytest.raises(ConfigError, match=r"^teacher.epochs=2.5 has the wrong type; expected an integer$"):
        load_config(overrides=["teacher.epochs=2.5"])


def test_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match=r"teacher.epochs=True has the wrong type"):
        load_config(overrides=["teacher.epochs=true"])


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'teacher.epoch'; known keys of teacher: model, width, epochs"
    ):
        load_config(overrides=["teacher.epoch=3"])


def test_unknown_section_in_yaml(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("teachr:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config section 'teachr'; known sections: data, teacher"):
        load_config(config_file)


def test_out_of_range_value_names_key_value_and_range():
    with pytest.raises(
        ConfigError, match=r"^prune.ratio=1.5 is not allowed: expected a fraction of channels in \[0, 1\)$"
    ):
        load_config(overrides=["prune.ratio=1.5"])


def test_unknown_model_and_dataset_names():
    with pytest.raises(ConfigError, match=r"teacher.model='vgg' is not a known model; available: cnn, mlp"):
        load_config(overrides=["teacher.model=vgg"])
    with pytest.raises(ConfigError, match=r"data.name='cifar' is not a known dataset; available: digits"):
        load_config(overrides=["data.name=cifar"])


def test_more_blocks_to_drop_than_the_student_has_is_a_config_error_before_anything_trains():
    with pytest.raises(ConfigError, match=r"^prune.drop_blocks=1: cnn x8 has no residual blocks with an identity"):
        load_config(overrides=["prune.drop_blocks=1"])
    with pytest.raises(ConfigError, match=r"resnet14 x4 has 4 residual blocks with an identity shortcut to drop \(1, "):
        load_config(overrides=["distill.model=resnet14", "distill.width=4", "prune.drop_blocks=5"])
    assert load_config(overrides=["distill.model=resnet14", "distill.width=4", "prune.drop_blocks=4"])


def test_drop_blocks_is_auto_by_default_and_a_count_or_auto_otherwise():
    with pytest.raises(ConfigError, match=r"^prune.drop_blocks='all' is not allowed: expected an integer >= 0 "):
        load_config(overrides=["prune.drop_blocks=all"])
    # The default student has no residual blocks: auto is still valid (it removes none).
    assert load_config().section("prune").drop_blocks == "auto"


@pytest.mark.parametrize("value", ["1.5", "true", "[1]"])
def test_a_wrong_type_names_what_the_field_takes_not_only_its_types(value):
    # drop_blocks is `int | str`: "an integer or a string" would not say that the one string it takes is auto, and
    # the YAML quoting hint for a boolean would not help (a quoted "true" is refused next).
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=[f"prune.drop_blocks={value}"])
    assert str(raised.value).startswith("prune.drop_blocks=")
    assert str(raised.value).endswith("has the wrong type; expected " + prune.DROP_BLOCKS_EXPECTED)
    assert "auto" in prune.DROP_BLOCKS_EXPECTED


def test_malformed_inputs(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("teacher: [epochs: 3\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML \(line \d+, column \d+: .+\); fix the syntax"):
        load_config(bad_yaml)
    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text("bench:\n  targets: [local, ssh://pi@board?python=/usr/bin/python3]\n")
    with pytest.raises(ConfigError, match=r"\(line 2, column 34: expected ',' or '\]', but got '\?'\); .* quoting"):
        load_config(unquoted)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must be a mapping of sections"):
        load_config(not_mapping)
    with pytest.raises(ConfigError, match=r"--set 'ratio' must look like section.key=value"):
        load_config(overrides=["ratio"])
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_null_only_where_allowed():
    assert load_config(overrides=["signoff.max_latency_ms=null"]).section("signoff").max_latency_ms is None
    with pytest.raises(ConfigError, match=r"teacher.epochs must not be null"):
        load_config(overrides=["teacher.epochs=null"])


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "c.yaml").write_text("data:\n  root: ../datasets\n")
    assert load_config(folder / "c.yaml").section("data").root == str(tmp_path / "datasets")


def test_latency_batch_must_be_benchmarked():
    with pytest.raises(
        ConfigError, match=r"signoff.latency_batch=1 is not measured: add it to bench.batch_sizes \(now \[8\]\)"
    ):
        load_config(overrides=["bench.batch_sizes=[8]"])


@pytest.mark.parametrize("name", ["default", "cifar10-cpu", "cifar10-gpu", "mnist", "finetune-pretrained"])
def test_every_shipped_profile_is_a_valid_config(name):
    import importlib.util

    # finetune-pretrained names torchvision models; where torchvision is not installed, everything else is checked.
    overrides = ["teacher.model=resnet20", "distill.model=mobilenetv2"]
    if name != "finetune-pretrained" or importlib.util.find_spec("torchvision") is not None:
        overrides = []
    config = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
    if name.startswith("cifar10"):
        assert config.section("data").root == str((ROOT.parent / "shared" / "datasets" / "cifar10").resolve())
        assert config.section("teacher").model in ("resnet20", "resnet56")
    if name == "finetune-pretrained":
        teacher, data = config.section("teacher"), config.section("data")
        assert teacher.epochs == 0 and teacher.weights == str(ROOT / "my-teacher.safetensors")
        assert data.image_size == 224 and config.section("distill").augment == "resized_crop"


def test_numbers_in_exponent_form_and_non_finite_numbers():
    assert load_config(overrides=["teacher.lr=1e-3"]).section("teacher").lr == 0.001  # YAML 1.1 reads it as text
    with pytest.raises(ConfigError, match=r"^teacher.lr=inf has the wrong type; expected a finite number$"):
        load_config(overrides=["teacher.lr=.inf"])
    with pytest.raises(ConfigError, match=r"teacher.lr='nan' has the wrong type"):
        load_config(overrides=["teacher.lr=nan"])


def test_latency_limits_must_be_measured():
    config = load_config(overrides=["signoff.latency_limits=['cpu:32:p99<=5']"])
    assert config.section("signoff").latency_limits == ("cpu:32:p99<=5",)
    with pytest.raises(ConfigError, match=r"entry 'cpu:64:p99<=5' is not measured: bench.batch_sizes is \[1, 32\]"):
        load_config(overrides=["signoff.latency_limits=['cpu:64:p99<=5']"])


@pytest.mark.parametrize(
    ("sets", "teacher_width", "student_width"),
    [
        ((), 32, 8),  # the defaults: cnn x32 teacher, cnn x8 student
        (("teacher.model=resnet20",), 16, 8),  # the published resnet20, not a 4x-MACs one at the cnn's width
        (("teacher.model=resnet20", "teacher.width=32"), 32, 8),  # a width the user sets is kept
        (("distill.model=mobilenetv2",), 32, 32),
        (("distill.model=mlp",), 32, 1200),
        (("teacher.model=resnet56", "teacher.width=null"), 16, 8),
    ],
)
def test_a_models_width_follows_the_architecture_unless_set(sets, teacher_width, student_width):
    config = load_config(overrides=sets)
    assert config.section("teacher").width == teacher_width
    assert config.section("distill").width == student_width


def test_a_width_set_in_the_config_file_survives_a_model_set_on_the_command_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("teacher:\n  model: resnet8\n  width: 8\ndistill:\n  model: resnet14\n")
    config = load_config(path, ["teacher.model=resnet20"])
    assert config.section("teacher").width == 8  # set by the file: kept
    assert config.section("distill").width == 16  # the file chose resnet14 without a width: the published 16


def test_a_budget_set_on_the_command_line_replaces_the_other_kind_the_config_file_set(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("prune:\n  target_speedup_vs_teacher: 6\n")
    prune = load_config(path, ["prune.target_latency_ms=0.05"]).section("prune")
    assert (prune.target_latency_ms, prune.target_speedup_vs_teacher) == (0.05, None)
    assert load_config(path).section("prune").target_speedup_vs_teacher == 6
    path.write_text("prune:\n  target_latency_ms: 0.05\n")
    prune = load_config(path, ["prune.target_speedup_vs_teacher=5"]).section("prune")
    assert (prune.target_latency_ms, prune.target_speedup_vs_teacher) == (None, 5)
    # Both in one layer is no replacement: one budget, said in one line.
    both = r"^prune.target_speedup_vs_teacher=5.0 is not allowed: expected null while prune.target_latency_ms is set"
    with pytest.raises(ConfigError, match=both):
        load_config(path, ["prune.target_speedup_vs_teacher=5", "prune.target_latency_ms=0.05"])
    path.write_text("prune:\n  target_latency_ms: 0.05\n  target_speedup_vs_teacher: 5\n")
    with pytest.raises(ConfigError, match=both):
        load_config(path)


def test_a_yaml_boolean_word_for_a_text_key_says_to_quote_it():
    with pytest.raises(ConfigError, match=r"^quantize.qat=False has the wrong type; expected a string \(YAML reads on"):
        load_config(overrides=["quantize.qat=off"])


def test_a_list_that_is_not_yaml_says_to_quote_its_items():
    # An unquoted '?' in a flow list item is not YAML: without this, the whole bracketed text became one target
    # and the error named that instead of the quoting.
    item = "bench.targets=[local, ssh://pi@board?python=/usr/bin/python3]"
    with pytest.raises(ConfigError, match=r"^--set '.*': the list is not valid YAML \(.*\); quote its items, e\.g\. "):
        load_config(overrides=[item])
    quoted = load_config(overrides=['bench.targets=[local, "ssh://pi@board?python=/usr/bin/python3"]'])
    assert quoted.section("bench").targets == ("local", "ssh://pi@board?python=/usr/bin/python3")
    assert load_config(overrides=["data.root=[odd]: name"]).section("data").root.endswith("[odd]: name")  # text


def test_one_thread_count_for_the_device_is_followed_by_the_searches_that_time_for_it(tmp_path):
    from pipeline.cache import ArtifactStore
    from pipeline.runner import needed_stages, plan_keys

    budget, device = "prune.target_latency_ms=0.05", "bench.threads=[1]"
    config = load_config(overrides=[budget, "quantize.search=true", device])
    assert config.section("prune").target_threads == 1 and config.section("quantize").search_threads == 1
    # What a config sets is kept, and the config check still holds it to the device's count.
    assert load_config(overrides=[budget, device, "bench.threads=[2]", "prune.target_threads=2"])
    with pytest.raises(ConfigError, match=r"^prune.target_threads=2 times the search's candidates at 2 thread"):
        load_config(overrides=[budget, device, "prune.target_threads=2"])
    kept = ["quantize.search=true", "quantize.search_threads=2", "bench.threads=[1,2]"]
    assert load_config(overrides=kept).section("quantize").search_threads == 2
    with pytest.raises(
        ConfigError, match=r"^quantize.search_threads=2 compares the int8 variants at 2 thread\(s\), wh"
    ):
        load_config(overrides=[*kept, device])
    assert load_config(overrides=[*kept[1:], device])  # no variant search: nothing compared
    # Several counts are no one count; no search, nothing to follow, so no other stage's cache key moves.
    assert (
        load_config(overrides=["quantize.search=true", "bench.threads=[1,2]"]).section("quantize").search_threads
        is None
    )
    store = ArtifactStore(tmp_path / "artifacts")
    stages = needed_stages("quantize")
    assert plan_keys(load_config(overrides=[device]), stages, store) == plan_keys(load_config(), stages, store)
    assert load_config(overrides=[device]).section("prune").target_threads is None
    on_cuda = [budget, device, "prune.target_provider=cuda", "signoff.latency_provider=cuda"]
    assert load_config(overrides=on_cuda).section("prune").target_threads is None  # CPU threads: CPU budgets only
    # The searches then key on the count they time at, as if the config had said it.
    said = [budget, "quantize.search=true", "prune.target_threads=1", "quantize.search_threads=1", device]
    assert plan_keys(config, stages, store) == plan_keys(load_config(overrides=said), stages, store)
