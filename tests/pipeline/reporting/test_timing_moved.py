"""A model whose settings search and rounds timed it far apart within one bench is said in the report."""

from __future__ import annotations

import pytest

from pipeline.reporting.timing_moved import MOVED, moved_text, moved_timings

PROVIDER = "CPUExecutionProvider"


def measured(name: str, search: tuple[float | None, float | None] | None, rounds_ms: float) -> dict:
    """A bench model: its chosen settings' (screen, refine) p50s (None: settings not searched), its rounds' p50."""
    searched = None
    if search is not None:
        other = {"chosen": False, "screen_ms": 9.0, "refine_ms": None}  # a slower setting, not the chosen one
        searched = [other, {"chosen": True, "screen_ms": search[0], "refine_ms": search[1]}]
    return {"name": name, "settings_search": searched, "latency": {PROVIDER: {"1": {"p50_ms": rounds_ms}}}}


def test_the_models_whose_rounds_moved_from_their_settings_search_are_named():
    models = [
        measured("teacher", (0.4391, 0.4200), 0.6420),  # the 2-thread teacher of BENCHMARKS.md, +53%
        measured("student", (0.2076, 0.2079), 0.2092),  # held
        measured("int8", (0.0588, None), 0.0400),  # one setting, only screened: -32%
        measured("pruned", None, 0.5),  # fixed settings (bench.tune false): nothing to compare
    ]
    moved = moved_timings(models, 1, "cpu")
    assert [m["name"] for m in moved] == ["teacher", "int8"]
    assert moved[0] == {"name": "teacher", "search_ms": 0.42, "rounds_ms": 0.642, "change": pytest.approx(0.5286, 1e-3)}
    assert moved[1]["search_ms"] == 0.0588 and moved[1]["change"] < -MOVED
    assert moved_timings(models, 64, "cpu") == []  # not measured at that batch
    models[0]["latency"]["CUDAExecutionProvider"] = {"1": {"p50_ms": 0.05}}
    assert moved_timings(models, 1, "cuda") == []  # the settings are searched on the CPU provider only
    report = {"timing_moved": moved, "config": {"signoff": {}}}  # a report before signoff.latency_basis: point
    text = moved_text(report)
    assert text.startswith(
        "Timing moved within this bench (more than 25%): teacher 0.4200 ms in its settings search, 0.6420 ms in the "
        "rounds (+53%); int8 0.0588 ms in its settings search, 0.0400 ms in the rounds (-32%)."
    )
    assert "The rounds are what the gates read" in text and "the speed-up gate" in text
    bound = moved_text({**report, "config": {"signoff": {"latency_basis": "bound"}}})
    assert bound.startswith(text[:60]) and "the teacher's fastest, the settings search's among them" in bound
    assert moved_text({**report, "timing_moved": []}) == moved_text({}) == ""  # nothing moved, or before the check


def test_the_report_says_what_moved_in_markdown_and_html(tiny_run):
    import json

    from pipeline.reporting.html import render_html
    from pipeline.reporting.markdown import render_markdown

    _, results = tiny_run
    report = json.loads(results["report"].artifact.file("report.json").read_text())
    assert isinstance(report["timing_moved"], list)  # computed by the report stage on every run
    report["timing_moved"] = [{"name": "teacher", "search_ms": 0.42, "rounds_ms": 0.642, "change": 0.5286}]
    said = "Timing moved within this bench (more than 25%): teacher 0.4200 ms in its settings search"
    assert f"**{said}" in render_markdown(report)
    assert f"<p><strong>{said}" in render_html(report)
    report["timing_moved"] = []
    assert "Timing moved" not in render_markdown(report) and "Timing moved" not in render_html(report)


def test_the_check_of_a_several_thread_setting_against_one_thread_is_said_in_markdown_and_html(tiny_run):
    import json

    from pipeline.reporting.html import render_html
    from pipeline.reporting.markdown import render_markdown
    from pipeline.reporting.timing_moved import held_text

    _, results = tiny_run
    report = json.loads(results["report"].artifact.file("report.json").read_text())
    assert all("settings_check" in m for m in report["models"])  # recorded for every model (None: not checked)
    for model in report["models"]:
        model["settings_check"] = None
    assert held_text(report) == ""
    assert "Settings held to the rounds" not in render_markdown(report) + render_html(report)
    report["models"][2]["settings_check"] = {  # the profile's pruned model on the Zen 4 EPYC: search 0.054 ms
        "searched": "2 threads, spinning on, all",
        "one_thread": "1 thread, spinning on, all",
        "searched_ms": 0.0900,
        "one_thread_ms": 0.0601,
        "kept": "one_thread",
    }
    name = report["models"][2]["name"]
    text = held_text(report)
    assert text.startswith("Settings held to the rounds: a model whose settings search chose more than one thread")
    assert text.endswith(
        f": {name}: 2 threads, spinning on, all 0.0900 ms, 1 thread, spinning on, all 0.0601 ms, one thread kept."
    )
    assert text in render_markdown(report) and f"<p>{text}</p>" in render_html(report).replace("&#x27;", "'")
