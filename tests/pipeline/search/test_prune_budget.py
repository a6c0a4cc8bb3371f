import pytest

from pipeline.reporting.latency_search_sections import uniform_baseline_section
from pipeline.search.prune_budget import both_unpruned, lower_floor, search_summary, shipped_arm, versus_uniform


@pytest.mark.parametrize(
    ("arms", "budget", "ships"),
    [
        ({"sampled": (0.19, 0.75), "uniform": (0.20, 0.76)}, 0.2213, "uniform"),  # both within: more accurate
        ({"sampled": (0.19, 0.76), "uniform": (0.20, 0.75)}, 0.2213, "sampled"),
        ({"sampled": (0.19, 0.75), "uniform": (0.23, 0.78)}, 0.2213, "sampled"),  # uniform over: not eligible
        ({"sampled": (0.25, 0.75), "uniform": (0.23, 0.70)}, 0.2213, "uniform"),  # neither within: the faster
        ({"per_layer": (0.20, 0.75), "uniform": (0.21, 0.75)}, 0.2213, "per_layer"),  # a tie: the first named
    ],
)
def test_the_more_accurate_on_validation_within_the_budget_ships(arms, budget, ships):
    assert shipped_arm(arms, budget) == ships


def schedule(validation: float, test: float, macs: int) -> list[dict]:
    after = {"validation_accuracy": validation, "test_accuracy": test}
    return [{"before_finetune": {"validation_accuracy": 0.1, "test_accuracy": 0.1}, "after_finetune": after,
             "macs": macs, "params": macs // 10}]  # fmt: skip


def decision(search: str, ratio: float, achieved_ms: float) -> dict:
    achieved = {"latency_ms": achieved_ms, "format": "fp32"}
    return {"search": search, "ratio": ratio, "met": True, "predicted_ms": achieved_ms, "budget_ms": 0.2,
            "achieved": achieved, "trace": [{"ratio": ratio, "latency_ms": achieved_ms}], "seconds": 1.0,
            "method": {"batch": 1}}  # fmt: skip


def test_the_uniform_baseline_is_recorded_beside_the_search_and_the_summary_names_what_shipped():
    search = decision("sampled", 0.357, 0.19)
    uniform = decision("uniform", 0.3, 0.18)
    both = versus_uniform(search, schedule(0.70, 0.69, 4000), uniform, schedule(0.72, 0.68, 5000))
    assert both["shipped"] == "uniform"  # more accurate on validation, though less on test: test is never read
    assert both["finetuned"] == {"validation_accuracy": 0.70, "test_accuracy": 0.69, "macs": 4000, "params": 400}
    baseline = both["uniform_baseline"]
    assert (
        baseline["ratio"] == 0.3
        and baseline["finetuned"]["macs"] == 5000
        and baseline["trace"] == [{"ratio": 0.3, "latency_ms": 0.18}]
    )
    assert both["ratio"] == 0.357 and both["achieved"]["latency_ms"] == 0.19  # the search's own decision stays
    assert "confirmed" not in baseline
    confirmed = {"rounds": 5, "searched_ratio": 0.3, "chosen_ratio": 0.2875, "seconds": 1.0, "entries": [],
                 "message": "28.8% of channels removed met the limit"}  # fmt: skip
    kept = versus_uniform(
        search, schedule(0.7, 0.69, 4000), {**uniform, "confirmed": confirmed}, schedule(0.72, 0.68, 5000)
    )
    assert kept["uniform_baseline"]["confirmed"] == confirmed
    assert "timed again beside its choice in interleaved rounds (1.0 s): 28.8% of channels removed met the limit." in (
        "\n".join(uniform_baseline_section(kept))
    )
    summary = search_summary(both)
    assert "achieved 0.18 ms fp32" in summary and "the uniform search's model shipped over the sampled one's" in summary
    assert "shipped" not in search_summary(search)
    assert search_summary(search).startswith("budget 0.2 ms met (")
    # The search missed its limit (the budget less the margin) but the fine-tuned model measured within the budget.
    missed = {**search, "met": False}
    assert search_summary(missed).startswith("budget 0.2 ms met after the fine-tune (the search's limit, under the")
    assert search_summary({**missed, "achieved": {"latency_ms": 0.21, "format": "fp32"}}).startswith(
        "budget 0.2 ms NOT met ("
    )


def test_the_report_section_puts_both_models_side_by_side_and_says_which_ships():
    search = decision("sampled", 0.357, 0.19)
    both = versus_uniform(
        search, schedule(0.70, 0.69, 4000), decision("uniform", 0.3, 0.18), schedule(0.72, 0.68, 5000)
    )
    lines = uniform_baseline_section(both)
    assert "the least whose measured p50 met the same limit (1 ratios measured in 1.0 s, ratio: ms: 0.3: " in lines[3]
    assert lines[-2:] == [
        "| sampled | 35.7% | 4,000 | 0.1900 | 0.1900 (fp32) | 0.7000 | 0.6900 | no |",
        "| uniform | 30.0% | 5,000 | 0.1800 | 0.1800 (fp32) | 0.7200 | 0.6800 | yes |",
    ]
    assert uniform_baseline_section(search) == []  # without the baseline, no section


def test_an_arm_within_the_searchs_limit_ships_over_a_more_accurate_one_only_within_the_budget():
    # The per-layer model at 0.19 ms is within the 0.2 budget and over its 0.18 limit; the uniform one at 0.17 is
    # within both: it ships, though less accurate on validation. Records without a limit: the budget alone.
    search, uniform = {**decision("per_layer", 0.4, 0.19), "limit_ms": 0.18}, decision("uniform", 0.45, 0.17)
    both = versus_uniform(search, schedule(0.75, 0.74, 4000), uniform, schedule(0.72, 0.71, 3000))
    assert both["shipped"] == "uniform"
    without = {key: value for key, value in search.items() if key != "limit_ms"}
    assert versus_uniform(without, schedule(0.75, 0.74, 4000), uniform, schedule(0.72, 0.71, 3000))["shipped"] == (
        "per_layer"
    )


def test_both_searches_keeping_every_channel_are_one_model_and_say_so():
    search, uniform = decision("sampled", 0.0, 0.14), decision("uniform", 0.0, 0.14)
    assert both_unpruned(search, uniform) and not both_unpruned(decision("sampled", 0.1, 0.13), uniform)
    # Every channel kept, but from the student without two blocks (prune.drop_blocks): two models, and the row says so.
    shallower = {**search, "dropped_blocks": ["6", "4"]}
    assert not both_unpruned(shallower, uniform)
    apart = versus_uniform(shallower, schedule(0.79, 0.78, 4000), uniform, schedule(0.81, 0.80, 6000))
    assert apart["uniform_baseline"]["same_model"] is False and "one model" not in search_summary(apart)
    assert uniform_baseline_section(apart)[-2].startswith("| sampled | 0.0% and blocks 6, 4 | 4,000 |")
    steps = schedule(0.78, 0.77, 6000)
    both = versus_uniform(search, steps, uniform, steps)
    assert both["uniform_baseline"]["same_model"] is True and both["shipped"] == "sampled"  # a tie: the search's
    assert "the uniform search kept every channel too: one model" in search_summary(both)
    assert uniform_baseline_section(both)[3].endswith("one model, fine-tuned and measured once for both rows.")
    apart = versus_uniform(decision("sampled", 0.2, 0.13), schedule(0.7, 0.7, 5000), uniform, steps)
    assert apart["uniform_baseline"]["same_model"] is False and "one model" not in search_summary(apart)


def test_what_lowers_the_floor_names_the_stride_2_variant_only_where_there_is_one():
    assert lower_floor("resnet8") == (
        "for a lower floor distill a smaller student (distill.model, distill.width; resnet8_s2 runs every layer "
        "after the stem on a quarter of the pixels)"
    )
    for model in ("resnet8_s2", "cnn", "mobilenetv2", "timm:mobilenetv3_small_050"):
        assert lower_floor(model) == "for a lower floor distill a smaller student (distill.model, distill.width)"


def test_both_arms_rounds_timed_again_are_kept_and_shown_in_report_md_and_report_html():
    from pipeline.reporting.html_search import remeasured_section
    from pipeline.search.prune_plateau import settled
    from pipeline.search.prune_ratio import decide, least_ratio

    # The uniform arm missed the budget: its plateau rounds chose 30%, tied with 50% in every round.
    trace = [{"ratio": r, "latency_ms": ms, "meets_limit": False} for r, ms in [(0.0, 0.35), (0.3, 0.25), (0.5, 0.24)]]
    missed = decide(trace, budget_ms=0.2, limit=0.2, margin=0.0, out_of_time=False, seconds=1.0)
    uniform = {**settled(missed, lambda settings: [0.24] * len(settings), least_ratio), "search": "uniform"}
    uniform |= {"achieved": {"latency_ms": 0.24, "format": "fp32"}, "method": {"batch": 1}}
    confirmed = {"rounds": 5, "searched_ratio": 0.357, "chosen_ratio": 0.2, "seconds": 1.0, "message": "20.0% met",
                 "entries": [{"ratio": 0.2, "first_runs_ms": [0.21], "runs_ms": [0.19] * 5, "median_ms": 0.19,
                              "meets_limit": True}]}  # fmt: skip
    search = {**decision("sampled", 0.2, 0.19), "confirmed": confirmed}
    both = versus_uniform(search, schedule(0.7, 0.69, 4000), uniform, schedule(0.6, 0.6, 3000))
    assert both["uniform_baseline"]["plateau"] == uniform["plateau"]
    markdown = "\n".join(uniform_baseline_section(both))
    assert "| 30.0% | 0.2400 0.2400 0.2400 0.2400 0.2400 | 0.2400 | no | fastest, **chosen** |" in markdown
    html = remeasured_section({"latency_search": both})
    assert html.startswith(
        "<h2>Candidates timed again</h2><p><strong>The search (prune.search: sampled).</strong> Configurations"
    )
    assert "<td>20.0%</td><td>0.2100</td><td>0.1900 0.1900 0.1900 0.1900 0.1900</td>" in html
    assert "<strong>The uniform search beside it (prune.uniform_baseline).</strong> Where no candidate" in html
    assert "<td>fastest, <strong>chosen</strong></td>" in html
    assert remeasured_section({"latency_search": decision("sampled", 0.2, 0.19)}) == ""
