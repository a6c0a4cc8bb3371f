"""Fixtures of the prune stage's tests (test_prune.py, test_prune_alternatives.py)."""

import pytest


@pytest.fixture
def short_search_timing(monkeypatch):
    """Candidates timed briefly: these tests check the search's logic and records, not the latencies."""
    from pipeline.search import prune_candidates

    fast = dict(warmup_runs=2, warmup_seconds=0, min_runs=20, min_seconds=0)
    monkeypatch.setattr(prune_candidates, "SEARCH_TIMING", (fast, fast))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One artifact store for the budget tests: they share data, teacher and distill, and differ in prune."""
    from pipeline.cache import ArtifactStore

    return ArtifactStore(tmp_path_factory.mktemp("artifacts"))
