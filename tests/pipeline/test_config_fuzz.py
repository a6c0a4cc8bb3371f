"""Property-based: no YAML file and no --set value makes load_config fail with anything but a ConfigError."""

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.runner import load_config, section_classes

SECTIONS = list(section_classes())
KEYS = sorted({f"{s}.{f}" for s, cls in section_classes().items() for f in cls.__dataclass_fields__})
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["1e400", "-0", ".nan", "~", "[1, [2]]", "{a: 1}", "2026-11-22", "!!binary aGk="]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def load_or_config_error(path=None, overrides=()):
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        assert "\n" not in str(error)  # one line
        return error


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=string.printable, max_size=200))
def test_any_text_as_a_config_file(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert isinstance(load_or_config_error(path), Config | ConfigError)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6), st.integers()),
        st.one_of(values, st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]), values, max_size=4)),
        max_size=4,
    )
)
def test_any_yaml_structure(tmp_path, document):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    assert isinstance(load_or_config_error(path), Config | ConfigError)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=10)),
            st.one_of(st.text(max_size=15), values.map(lambda v: yaml.safe_dump(v).strip())),
        ),
        max_size=3,
    )
)
def test_any_set_values(pairs):
    assert isinstance(load_or_config_error(overrides=[f"{k}={v}" for k, v in pairs]), Config | ConfigError)
