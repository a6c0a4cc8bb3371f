from pipeline.reporting.latency_search_sections import latency_search_section
from pipeline.search.prune_layers import Group, candidate_counts, predict_additive, search_layers

GROUPS = [Group(name, candidate_counts(n, 0), (1.0,) * n) for name, n in (("conv1", 16), ("conv2", 32))]
TABLE = {"conv1": {16: 1.0, 8: 0.6}, "conv2": {32: 1.0, 24: 0.9, 16: 0.8, 8: 0.7}}


def recorded(decision, table, **method):
    """A decision as the prune stage records it: its method (additive model, one thread) and achieved latency."""
    timing = {"batch": 1, "provider": "cpu", "settings": "1 thread", "formats": ["fp32"], "latency_model": "additive"}
    return {
        **decision,
        "method": {**timing, "table": table, **method},
        "achieved": {"latency_ms": 0.65, "format": "fp32"},
    }


def test_the_per_layer_section_shows_each_groups_count_and_predicted_against_achieved():
    groups, table = GROUPS, TABLE

    def measure(channels):
        return {
            "latency_ms": predict_additive(groups, table, channels) + 0.01,
            "format": "fp32",
            "fp32_ms": 0.0,
            "macs": 1000,
        }

    decision = search_layers(groups, table, measure, budget_ms=0.7, margin=0.0, time_budget_s=60)
    search = recorded(decision, "cached", scoring={"score": "magnitude"})
    method = search["method"]
    lines = latency_search_section(search)
    text = "\n".join(lines)
    assert "## Latency-budget search (prune.target_latency_ms, per layer)" in text
    assert "| conv1 | 16 | **8** | 16: 1.0000, 8: 0.6000 |" in lines
    assert "additive prediction 0.6000 ms, measured before the fine-tune 0.6100 ms" in text
    assert "achieved after the fine-tune 0.6500 ms (fp32)" in text
    assert "| 1 | 1 | conv1:8 conv2:32 | 0.6000 | 0.6100 (fp32) | 1,000 | yes |" in lines
    assert "greedily on the weight magnitude of the channels removed per ms" in text  # no scoring recorded
    # Scored on validation: the text says how, and every measured configuration shows its score.
    scoring = {"score": "validation", "bn_images": 1024, "scored": 9, "seconds": 2.5}
    runs = {"latency_runs_ms": [0.62, 0.61, 0.7]}  # prune.search_repeats 3, the median kept
    trace = [{**e, "validation": {"accuracy": 0.75, "loss": 0.8}, **runs} for e in decision["trace"]]
    scored = latency_search_section({**search, "trace": trace, "method": {**method, "scoring": scoring}})
    row = "| 1 | 1 | conv1:8 conv2:32 | 0.6000 | 0.6100 (fp32; 3 runs 0.6100–0.7000) | 1,000 | yes | 0.7500 |"
    assert row in scored
    assert "on 1024 training images and no fine-tune (prune.search_score: validation; 9" in "\n".join(scored)


def test_the_sampled_section_shows_how_the_configurations_scored_at_each_target_compared():
    from pipeline.reporting.plots import sampled_candidates
    from pipeline.search.prune_sampled import search_sampled

    groups, table = GROUPS, TABLE

    def measure(channels):
        return {"latency_ms": predict_additive(groups, table, channels) + 0.05, "format": "fp32", "macs": 1000}

    def score(channels):  # conv2's channels are worth more than conv1's
        accuracy = 0.5 + channels["conv1"] / 160 + channels["conv2"] / 80
        return {"accuracy": accuracy, "loss": 1 - accuracy}

    decision = search_sampled(groups, table, measure, score, 0.75, 0.0, 60, samples=2, seed=0)
    scoring = {"score": "validation", "bn_images": 1024, "scored": 4, "seconds": 1.0}
    search = recorded(decision, "measured", scoring=scoring)
    lines = latency_search_section(search)
    text = "\n".join(lines)
    assert "## Latency-budget search (prune.target_latency_ms, per layer, sampled)" in text
    assert "configurations along 4 paths through the table (even, magnitude and 2 random), ranked on validation" in text
    assert "re-estimated on 1024 training images, no fine-tune; 4 configurations scored in 1.0 s), the best" in text
    assert "prune.search_score" not in text  # the greedy search's knob: the sampled search always scores on validation
    # At 0.75 ms three paths stop at conv1 8 (0.6 ms, the best scored; it measures 0.65, met at the first target);
    # random 1 thinned conv2 first and went on to conv1 8 conv2 24 (0.5 ms, 0.85).
    assert decision["channels"] == {"conv1": 8, "conv2": 32}
    assert "| 1 | 0.7500, even magnitude random 2 | conv1:8 conv2:32 | 0.6000 | 0.6500 (fp32) | 1,000 | yes |" in text
    best = [line for line in lines if line.startswith("| 1 | 0.7500 | ")]
    assert best == ["| 1 | 0.7500 | 2 | 0.9500 (even magnitude random 2) | 0.9000 | 0.8500 | 0.9500 |"]
    assert sampled_candidates(search).axes  # the HTML report's plot of every configuration scored


def test_the_quantization_aware_section_shows_the_drop_that_triggered_it_and_what_was_kept():
    from pipeline.reporting.html import _quantization_aware
    from pipeline.reporting.search_sections import quantization_aware_section

    common = {"mode": "auto", "max_drop": 0.005, "fp32_validation_accuracy": 0.8123}
    records = {
        "int8": {**common, "ptq_validation_accuracy": 0.7901, "ptq_drop": 0.0222, "ran": True,
                 "qat_validation_accuracy": 0.8088, "kept": "quantization-aware",
                 "agreement": {"images": 256, "max_logit_difference": 1e-7, "top1_disagreement": 0.0}},
        "student_int8": {**common, "ptq_validation_accuracy": 0.8101, "ptq_drop": 0.0022, "ran": False,
                         "kept": "post-training"},
    }  # fmt: skip
    markdown = "\n".join(quantization_aware_section(records))
    assert "| int8 | 0.8123 | 0.7901 | +0.0222 | 0.8088 | quantization-aware |" in markdown
    assert "| student_int8 | 0.8123 | 0.8101 | +0.0022 | not run | post-training |" in markdown
    assert "top-1 differs on 0.0% of 256" in markdown
    html = _quantization_aware({"quantization_aware": records})
    assert "<td>0.8088</td><td>quantization-aware</td>" in html and "<td>not run</td>" in html
    assert quantization_aware_section({}) == [] and _quantization_aware({}) == ""


def test_int8_is_said_to_be_slower_than_its_fp32_source_where_it_is():
    from pipeline.reporting.search_sections import int8_speed_section

    def model(name, p50):
        return {"name": name, "latency": {"CPUExecutionProvider": {"1": {"p50_ms": p50}}}}

    report = {
        "edge_choice": {"batch": 1, "provider": "CPUExecutionProvider"},
        "int8_sources": {"int8": "pruned", "student_int8": "student"},
        "models": [model("pruned", 0.02), model("int8", 0.03), model("student", 0.05), model("student_int8", 0.04)],
    }
    text = "\n".join(int8_speed_section(report))
    assert "- int8: p50 0.0300 ms against 0.0200 ms for pruned, its fp32 source, at batch 1" in text
    assert "int8 is slower on this machine; the edge choice keeps the faster form" in text
    assert (
        "student_int8: p50 0.0400 ms against 0.0500 ms for student" in text
        and "int8 is faster on this machine." in text
    )
    assert int8_speed_section({**report, "int8_sources": {}}) == []


def test_a_met_budgets_rivals_timed_again_are_shown_with_their_first_repeats():
    from pipeline.reporting.latency_search_sections import confirmed_lines
    from pipeline.search.prune_confirm import confirmed
    from pipeline.search.prune_ratio import least_ratio

    trace = [
        {"ratio": 0.0, "latency_ms": 0.050, "latency_runs_ms": [0.040, 0.050, 0.052], "meets_limit": False},
        {"ratio": 0.3, "latency_ms": 0.041, "latency_runs_ms": [0.041, 0.040, 0.042], "meets_limit": True},
    ]
    searched = {"ratio": 0.3, "met": True, "limit_ms": 0.0419, "out_of_time": False, "trace": trace}
    result = confirmed(searched, lambda settings: [0.039 if s == 0.0 else 0.041 for s in settings], least_ratio)
    text = "\n".join(confirmed_lines(result))
    assert "timed again beside its choice in interleaved rounds" in text
    assert "0.0% of channels removed met the 0.0419 ms limit in 5 interleaved rounds (0.039 ms" in text
    assert "| 0.0% | 0.0400 0.0500 0.0520 | 0.0390 0.0390 0.0390 0.0390 0.0390 | 0.0390 | yes | **chosen** |" in text
    assert "| 30.0% | 0.0410 0.0400 0.0420 | " in text and "| yes | searched |" in text
    assert confirmed_lines(searched) == []
