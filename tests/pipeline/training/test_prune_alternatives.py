"""prune.alternatives: which networks are tried beside the pruned student, and which one ships."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.runner import load_config
from pipeline.training.prune_alternatives import Alternative, more_accurate, parse, resolve, summary


def test_auto_is_the_students_stride_2_variant_at_its_width_and_nothing_for_a_student_without_one():
    assert resolve(("auto",), "resnet8", 4) == [("resnet8_s2", 4)]
    assert resolve(("auto",), "resnet20", 16) == [("resnet20_s2", 16)]
    assert resolve(("auto",), "cnn", 8) == []
    assert resolve(None, "resnet8", 4) == []


def test_named_networks_take_their_published_width_or_one_after_at_and_repeats_and_the_student_go():
    assert parse("resnet8_s2") == ("resnet8_s2", 16) and parse("resnet14@8") == ("resnet14", 8)
    entries = ("auto", "resnet8_s2@4", "resnet14@8", "resnet8@4", "resnet14@8")
    assert resolve(entries, "resnet8", 4) == [("resnet8_s2", 4), ("resnet14", 8)]


@pytest.mark.parametrize("entry", ["nosuch", "resnet8@0", "resnet8@x", "torchvision:resnet18", "pkg.mod:build"])
def test_a_bad_entry_is_one_line_naming_it_from_the_config(entry):
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=[f"prune.alternatives=[auto, {entry}]"])
    message = str(raised.value)
    assert message.startswith(f"prune.alternatives: {entry!r} is not one; expected auto (the student's stride-2")
    assert "\n" not in message


def test_the_config_takes_one_name_a_list_or_null():
    def alternatives(value):
        return load_config(overrides=[f"prune.alternatives={value}"]).section("prune").alternatives

    assert load_config().section("prune").alternatives == ("auto",)
    assert alternatives("resnet8_s2") == ("resnet8_s2",)
    assert alternatives("[resnet8_s2@8, auto]") == ("resnet8_s2@8", "auto")
    assert alternatives("null") is None


def trained(label: str, latency_ms: float, validation: float) -> Alternative:
    record = {"model": label, "trained": True, "shipped": False, "validation_accuracy": validation}
    record["achieved"] = {"latency_ms": latency_ms, "format": "int8"}
    return Alternative(record, model=object(), spec=label)


def untrained(label: str, latency_ms: float) -> Alternative:
    return Alternative({"model": label, "trained": False, "shipped": False, "untrained": {"latency_ms": latency_ms}})


@pytest.mark.parametrize(
    ("pruned", "others", "ships"),
    [
        ((0.05, 0.66), [("resnet8_s2 x16", 0.05, 0.77)], "resnet8_s2 x16"),  # more accurate within: it ships
        ((0.05, 0.77), [("resnet8_s2 x16", 0.05, 0.77)], None),  # a tie: the pruned student
        ((0.05, 0.70), [("resnet8_s2 x16", 0.051, 0.9)], None),  # over the budget after training
        ((0.06, 0.80), [("resnet8_s2 x16", 0.04, 0.5)], "resnet8_s2 x16"),  # the pruned model missed it
        ((0.05, 0.60), [("a", 0.03, 0.7), ("b", 0.04, 0.75)], "b"),  # the most accurate of several within
    ],
)
def test_the_most_accurate_on_validation_within_the_budget_ships_the_pruned_model_on_a_tie(pruned, others, ships):
    alternatives = [trained(*other) for other in others] + [untrained("c", 0.01)]
    best = more_accurate(alternatives, *pruned, budget_ms=0.05)
    assert (best.record["model"] if best else None) == ships
    assert [a.record["model"] for a in alternatives if a.record["shipped"]] == ([ships] if ships else [])


def test_the_summary_says_what_each_alternative_measured_and_which_ships():
    shipped = trained("resnet8_s2 x16", 0.0481, 0.7712)
    shipped.record["shipped"] = True
    said = summary([shipped, untrained("resnet14_s2 x16", 0.0912)])
    assert said == (
        "alternatives: resnet8_s2 x16 whole 0.0481 ms, 0.7712 validation, ships; resnet14_s2 x16 not trained "
        "(0.0912 ms untrained, over the budget); "
    )
    assert summary(None) == "" and summary([]) == ""
