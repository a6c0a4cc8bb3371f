import logging

from pipeline.search.prune_layer_table import cached_table
from pipeline.search.prune_layers import Group, candidate_counts


def counting_candidates():
    """A stand-in for Candidates: latency falls with the channels pruned; remembers what it measured."""
    asked = []

    def measure(channels):
        asked.append(dict(channels))
        return {"latency_ms": 1.0 - 0.01 * sum(32 - count for count in channels.values())}

    measure.asked = asked
    return measure


GROUPS = [Group("conv", candidate_counts(32, 0), (1.0,) * 32)]


def test_the_table_is_measured_once_per_key_and_a_corrupt_file_is_measured_again(tmp_path, caplog):
    measure = counting_candidates()
    table, cached = cached_table(measure, GROUPS, {"machine": "a"}, tmp_path)
    assert not cached and measure.asked == [{}, {"conv": 24}, {"conv": 16}, {"conv": 8}]
    assert table == {"conv": {32: 1.0, 24: 0.92, 16: 0.84, 8: 0.76}}
    again, cached = cached_table(measure, GROUPS, {"machine": "a"}, tmp_path)  # another budget, same machine
    assert cached and again == table and len(measure.asked) == 4
    cached_table(measure, GROUPS, {"machine": "b"}, tmp_path)  # another machine: its own table
    assert len(measure.asked) == 8
    for path in tmp_path.iterdir():
        path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        _, cached = cached_table(measure, GROUPS, {"machine": "a"}, tmp_path)
    assert not cached and len(measure.asked) == 12 and "unreadable" in caplog.text
