"""The report's list of the prune stage's timings over the budget taken again (pipeline/reporting/timed_again.py)."""

from __future__ import annotations

from pipeline.reporting.timed_again import gathered, timed_again_lines, timed_again_section


def again(*rounds_ms: float) -> dict:
    return {"rounds_ms": list(rounds_ms), "gap_s": 10.0, "limit_ms": 0.063}


PRUNE = {
    "latency_search": {
        "budget_ms": 0.063,
        # the chosen arm's measurement, listed once: as its arm
        "search": "per_layer",
        "trace": [
            {"ratio": 0.3571, "latency_ms": 0.1691},  # over twice the limit: measured once
            {"ratio": 0.4615, "latency_ms": 0.0620, "timed_again": {**again(0.0736, 0.0620), "limit_ms": 0.0567}},
        ],
        "achieved": {"latency_ms": 0.0551, "timed_again": again(0.0822, 0.0551)},
        "uniform_baseline": {"same_model": False, "achieved": {"latency_ms": 0.0790, "timed_again": again(0.1, 0.079)}},
    },
    "depth": {
        "arms": [
            {"blocks": [], "achieved_ms": 0.1119, "timed_again": None},  # never within: not fine-tuned, nothing again
            {"blocks": ["layer1"], "achieved_ms": 0.0551, "timed_again": again(0.0822, 0.0551)},
        ]
    },
    "alternatives": [
        {
            "name": "resnet8_s2",
            "width": 16,
            "model": "resnet8_s2 x16",
            "trained": True,
            "widths": [
                {"width": 32, "latency_ms": 0.2, "timed_again": again(0.21, 0.2)},
                {"width": 16, "latency_ms": 0.0529, "timed_again": again(0.1062, 0.0987, 0.0529)},
            ],
            "untrained": {"latency_ms": 0.0529},
            "achieved": {"latency_ms": 0.0540},  # within at its first timing: not listed
        },
        {  # a named network: no widths, its one untrained timing
            "name": "mobilenet",
            "width": None,
            "model": "mobilenet",
            "trained": False,
            "widths": None,
            "untrained": {"latency_ms": 0.09, "timed_again": again(0.12, 0.09)},
        },
    ],
}


def test_every_timing_taken_again_is_listed_once_in_the_order_the_stage_took_it():
    listed = gathered(PRUNE)
    assert [(entry["what"], entry["decided_ms"]) for entry in listed] == [
        ("the per-layer search's configuration with 46.2% of channels removed", 0.0620),
        ("the arm without 1 block(s) after its fine-tune", 0.0551),
        ("the uniform search's model after its fine-tune", 0.0790),
        ("resnet8_s2 x32 untrained", 0.2),
        ("resnet8_s2 x16 untrained", 0.0529),
        ("mobilenet untrained", 0.09),
    ]
    assert listed[4]["rounds_ms"] == [0.1062, 0.0987, 0.0529] and listed[4]["gap_s"] == 10.0
    # Without depth arms the search's own model is the one listed; a uniform arm that is the same model is not.
    alone = {**PRUNE, "depth": None}
    alone["latency_search"] = {**PRUNE["latency_search"], "uniform_baseline": {"same_model": True, "achieved": {}}}
    assert [entry["what"] for entry in gathered(alone)][1:3] == [
        "the pruned model after its fine-tune",
        "resnet8_s2 x32 untrained",
    ]


def test_the_report_says_each_round_what_decided_and_what_stayed_over():
    report = {"pruning": {"timed_again": gathered(PRUNE)}, "latency_search": {"budget_ms": 0.063}}
    (line,) = timed_again_lines(report)
    assert line.startswith("- Timed again while over the budget of 0.063 ms (a search's configurations: over its limit")
    assert "resnet8_s2 x16 untrained 0.1062, then 0.0987, 0.0529 ms, 10 s apart (0.0529 decided);" in line
    # within the budget, over the search's limit: said against the limit its rounds were held to
    assert "46.2% of channels removed 0.0736, then 0.0620 ms, 10 s apart (0.0620 decided, over 0.0567);" in line
    assert (
        "the uniform search's model after its fine-tune 0.1000, then 0.0790 ms, 10 s apart "
        "(0.0790 decided, over 0.063)" in line
    )
    assert timed_again_section(report).startswith("<h2>Timed again while over the budget</h2><p>Timed again while")


def test_nothing_taken_again_or_a_report_from_before_it_says_nothing():
    for pruning in ({"timed_again": []}, {}):
        report = {"pruning": pruning, "latency_search": None}
        assert timed_again_lines(report) == [] and timed_again_section(report) == ""
    assert gathered({"latency_search": None, "depth": None, "alternatives": None}) == []
