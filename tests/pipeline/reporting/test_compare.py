"""Comparing two reports, and re-checking a report's sign-off from its own numbers."""

import copy
import json

import pytest

from pipeline.errors import ConfigError
from pipeline.reporting.compare import compare, format_comparison, load_report
from pipeline.reporting.recheck import format_recheck, recheck_signoff
from stages.bench import PROVIDER
from stages.report import Params as SignoffParams
from tests.pipeline.reporting.test_html import model, synthetic_report


def stats(report: dict, name: str, batch: str = "1") -> dict:
    return next(m for m in report["models"] if m["name"] == name)["latency"][PROVIDER][batch]


def set_accuracy(report: dict, name: str, accuracy: float) -> None:
    next(m for m in report["models"] if m["name"] == name)["accuracy"] = accuracy


def kinds(result: dict) -> list[tuple]:
    return [(r["kind"], r["model"]) for r in result["regressions"]]


def test_identical_reports_change_nothing():
    report = synthetic_report()
    result = compare(report, copy.deepcopy(report))
    assert result["regressions"] == [] and result["added"] == [] and result["removed"] == []
    assert all(c["change"] == 0 for c in result["changes"])
    assert not result["edge_model"]["changed"] and not result["signoff"]["changed"]
    assert "regressions: none" in format_comparison(result)


def test_accuracy_drop_beyond_the_threshold_is_flagged():
    old, new = synthetic_report(), synthetic_report()
    set_accuracy(new, "teacher", 0.98)  # -0.01
    set_accuracy(new, "student", 0.976)  # -0.004: within half a point
    result = compare(old, new)
    assert kinds(result) == [("accuracy drop", "teacher")]
    row = next(c for c in result["changes"] if c["model"] == "teacher" and c["metric"] == "accuracy")
    assert row["change"] == pytest.approx(-0.01) and row["relative_change"] == pytest.approx(-0.01 / 0.99)
    assert compare(old, new, accuracy_drop=0.02)["regressions"] == []
    assert "teacher: accuracy drop" in format_comparison(result)


def test_latency_regression_needs_disjoint_confidence_intervals():
    old, new = synthetic_report(), synthetic_report()
    teacher = stats(new, "teacher")  # old p90 1.3 ms, CI [1.25, 1.35]
    teacher["p90_ms"], teacher["p90_ci_ms"] = 1.45, [1.40, 1.50]
    student = stats(new, "student")  # old p90 0.39, CI [0.375, 0.405]: +10%, but the CIs overlap
    student["p90_ms"], student["p90_ci_ms"] = 0.43, [0.40, 0.46]
    result = compare(old, new)
    assert kinds(result) == [("latency regression", "teacher")]
    flagged = result["regressions"][0]
    assert (flagged["method"], flagged["batch"], flagged["provider"]) == ("ci", "1", PROVIDER)
    assert "do not overlap" in flagged["detail"]


def test_latency_without_confidence_intervals_uses_the_relative_threshold():
    old, new = synthetic_report(optional=False), synthetic_report(optional=False)
    stats(new, "teacher")["p90_ms"] = 1.3 * 1.10
    stats(new, "student")["p90_ms"] = 0.39 * 1.04  # under 5%: noise
    result = compare(old, new)
    assert kinds(result) == [("latency regression", "teacher")]
    assert result["regressions"][0]["method"] == "relative"
    assert compare(old, new, min_change=0.2)["regressions"] == []


def test_a_confidence_interval_on_one_side_only_falls_back_to_the_relative_threshold():
    old, new = synthetic_report(optional=False), synthetic_report()
    stats(new, "pruned")["p90_ms"] = 0.26 * 1.5  # new CI says nothing about the old run's noise
    assert [(r["model"], r["method"]) for r in compare(old, new)["regressions"]] == [("pruned", "relative")]


def test_models_added_and_removed_are_listed_but_not_regressions():
    old, new = synthetic_report(), synthetic_report()
    new["models"] = [m for m in new["models"] if m["name"] != "student_int8"] + [model("tiny", 0.96, 0.05, 9000)]
    result = compare(old, new)
    assert result["added"] == ["tiny"] and result["removed"] == ["student_int8"]
    assert result["regressions"] == []
    assert {c["model"] for c in result["changes"]} == {"teacher", "student", "pruned", "int8"}
    text = format_comparison(result)
    assert "models added: tiny" in text and "models removed: student_int8" in text


def test_signoff_turning_failed_is_a_regression_and_edge_change_is_reported():
    old, new = synthetic_report(), synthetic_report(max_size_bytes=1000)
    new["edge_model"] = "student"
    result = compare(old, new)
    assert result["signoff"] == {"old": True, "new": False, "changed": True}
    assert result["edge_model"] == {"old": "pruned", "new": "student", "changed": True}
    assert kinds(result) == [("sign-off failed", None)]
    assert "max_size_bytes" in result["regressions"][0]["detail"]
    assert "sign-off: PASSED → FAILED (changed)" in format_comparison(result)


def test_recheck_agrees_with_an_untouched_report():
    result = recheck_signoff(synthetic_report(max_latency_ms=1.0, min_speedup_vs_teacher=2.0), SignoffParams)
    # Within the 1 ms limit the student (0.98 validation) is fast enough, and more accurate than pruned (0.97).
    assert result["passed"] and result["edge_model"] == "student" and result["mismatches"] == []
    assert len(result["gates"]) == 5


def test_recheck_names_the_closest_models_as_the_run_does_a_moved_timing_included():
    report = synthetic_report(max_latency_ms=0.05)  # every model over it; int8 also loses too much accuracy
    pruned = next(m for m in report["models"] if m["name"] == "pruned")
    pruned["settings_search"] = [{"chosen": True, "refine_ms": 0.1, "screen_ms": 0.1}]  # its rounds: +100%
    assert recheck_signoff(report, SignoffParams)["closest"] == (
        "pruned (max_latency_ms_p90_batch_1 0.26 against 0.05; its rounds timed +100% against its settings search); "
        "student_int8 (max_latency_ms_p90_batch_1 0.325 against 0.05); student (max_latency_ms_p90_batch_1 0.39 "
        "against 0.05); 1 more"
    )


def test_recheck_reports_a_tampered_verdict_and_the_recomputed_one_wins():
    report = synthetic_report(max_size_bytes=1000)  # pruned is 20,000 bytes: fails
    report["signoff"]["passed"] = True
    gate = next(g for g in report["signoff"]["gates"] if g["name"] == "max_size_bytes")
    gate["passed"], gate["value"] = True, 900
    result = recheck_signoff(report, SignoffParams)
    assert result["passed"] is False
    found = {m["name"]: m for m in result["mismatches"]}
    assert found["max_size_bytes"]["fields"] == ["value", "passed"]
    assert found["max_size_bytes"]["recomputed"]["value"] == 20_000
    assert found["signoff.passed"]["stored"] is True and found["signoff.passed"]["recomputed"] is False
    assert "mismatch in max_size_bytes" in format_recheck(result)


def test_recheck_flags_gates_and_edge_model_the_rules_do_not_produce():
    report = synthetic_report()
    report["edge_model"] = "int8"
    report["signoff"]["gates"].append({"name": "made_up", "limit": 1, "value": 0, "passed": True})
    report["signoff"]["gates"] = [g for g in report["signoff"]["gates"] if g["name"] != "min_accuracy"]
    found = {m["name"]: m for m in recheck_signoff(report, SignoffParams)["mismatches"]}
    assert found["made_up"]["recomputed"] is None and found["min_accuracy"]["stored"] is None
    assert (found["edge_model"]["stored"], found["edge_model"]["recomputed"]) == ("int8", "pruned")


def test_unreadable_or_incomplete_reports_are_one_line_config_errors(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"report\.json: not a readable report\.json"):
        load_report(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_report(tmp_path / "absent.json")
    report = synthetic_report()
    del report["models"][1]["accuracy"]
    path.write_text(json.dumps(report))
    with pytest.raises(ConfigError, match=r"report\.json: missing key models\[1\]\.accuracy$"):
        load_report(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r["config"].pop("signoff"), r"^x\.json: missing key config\.signoff$"),
        (lambda r: r["signoff"].pop("gates"), r"missing key signoff\.gates"),
        (lambda r: r["config"]["signoff"].update(min_acc=0.9), r"unknown key\(s\) min_acc; known: min_accuracy"),
        (lambda r: r["config"]["signoff"].update(min_accuracy=2), r"x\.json: signoff\.min_accuracy=2"),
        (lambda r: r["models"][2]["latency"][PROVIDER].pop("1"), rf"models\[2\]\.latency\.{PROVIDER}\.1$"),
        (lambda r: r.update(models=[m for m in r["models"] if m["name"] != "student"]), "named 'student'"),
    ],
)
def test_recheck_names_the_file_and_the_key(damage, message):
    report = synthetic_report()
    damage(report)
    with pytest.raises(ConfigError, match=message):
        recheck_signoff(report, SignoffParams, source="x.json")


def test_compare_names_the_report_missing_a_key():
    new = synthetic_report()
    del new["edge_model"]
    with pytest.raises(ConfigError, match="^new report: missing key edge_model$"):
        compare(synthetic_report(), new)


def rounds_report(medians: dict[str, list[float]]) -> dict:
    report = synthetic_report()
    for entry in report["models"]:
        stats = entry["latency"]["CPUExecutionProvider"]["1"]
        stats["round_medians_ms"] = medians[entry["name"]]
        stats["p50_ms"] = sorted(medians[entry["name"]])[len(medians[entry["name"]]) // 2]
    return report


def test_reports_with_rounds_flag_only_a_change_beyond_the_minimum_and_the_rounds():
    names = ["teacher", "student", "pruned", "int8", "student_int8"]
    old = rounds_report({n: [1.0, 1.02, 0.98, 1.01, 0.99] for n in names})
    new = rounds_report(
        {
            "teacher": [1.03, 1.05, 1.01, 1.04, 1.02],  # +3%: under the minimum change
            "student": [1.2, 1.21, 1.19, 1.22, 1.18],  # +20%, every round slower: a regression
            "pruned": [1.2, 0.97, 1.3, 1.25, 1.1],  # +20% median, but a new round as fast as old ones: noise
            "int8": [1.0, 1.02, 0.98, 1.01, 0.99],
            "student_int8": [0.8, 0.81, 0.79, 0.8, 0.8],  # faster
        }
    )
    found = [(r["model"], r["statistic"], r["method"]) for r in compare(old, new)["regressions"]]
    assert found == [("student", "p50", "rounds")]
    assert compare(old, new, min_change=0.25)["regressions"] == []
