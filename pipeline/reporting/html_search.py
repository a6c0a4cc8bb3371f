"""report.html's sections of the prune stage's searches beside the trace plot: the per-layer search against the
uniform one, the depths prune.drop_blocks auto tried, and the configurations timed again in interleaved rounds.
The words and cells are report.md's (latency_search_sections, depth_section)."""

from __future__ import annotations

from pipeline.reporting.depth_section import DEPTH_HEADER, depth_arm_rows, depth_arms_text, depth_lines
from pipeline.reporting.html_figures import escape as _e
from pipeline.reporting.html_figures import table, table_rows
from pipeline.reporting.latency_search_sections import (
    UNIFORM_HEADER,
    Parts,
    confirmed_parts,
    plateau_parts,
    same_model_sentence,
    uniform_baseline_rows,
)


def uniform_baseline_section(report: dict) -> str:
    """A per-layer search's model against the uniform search's at the same budget (prune.uniform_baseline)."""
    search = report.get("latency_search") or {}
    if "uniform_baseline" not in search:
        return ""
    return (
        "<h2>Per-layer against uniform pruning at the same budget</h2>"
        "<p>Both pruned from the student and fine-tuned the same way; the more accurate on validation within the "
        "budget ships (prune.uniform_baseline)."
        + same_model_sentence(search["uniform_baseline"])
        + "</p>"
        + table(UNIFORM_HEADER, table_rows(uniform_baseline_rows(search)))
    )


def depth_section(report: dict) -> str:
    """The residual blocks prune.drop_blocks removed, in report.md's words, and auto's depths."""
    depth = (report.get("pruning") or {}).get("depth")
    lines = depth_lines(depth)
    if not lines:
        return ""
    html = f"<h2>Residual blocks removed</h2><p>{_e(lines[0].removeprefix('- '))}</p>"
    budget_ms = (report.get("latency_search") or {}).get("budget_ms")
    if depth.get("arms") is None or budget_ms is None:
        return html
    arms = table(DEPTH_HEADER, table_rows(depth_arm_rows(depth)))
    return html + f"<p>{_e(depth_arms_text(depth, budget_ms))}</p>" + arms


def remeasured_section(report: dict) -> str:
    """Each search's candidates timed again in interleaved rounds: a missed budget's contenders (plateau) and a met
    budget's rivals (confirmed). A single round on a 2-core machine can be a burst; these rounds decided."""
    search = report.get("latency_search") or {}
    searches = [(f"The search (prune.search: {search.get('search', '')})", search)]
    if "uniform_baseline" in search:
        searches.append(("The uniform search beside it (prune.uniform_baseline)", search["uniform_baseline"]))
    html = ""
    for title, decision in searches:
        for parts in (plateau_parts(decision), confirmed_parts(decision)):
            html += _parts(title, parts)
    return "<h2>Candidates timed again</h2>" + html if html else ""


def _parts(title: str, parts: Parts | None) -> str:
    if parts is None:
        return ""
    intro, header, cells = parts
    return f"<p><strong>{_e(title)}.</strong> {_e(intro)}</p>" + table(header, table_rows(cells))
