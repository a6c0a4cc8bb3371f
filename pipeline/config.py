"""Resolved configuration: stage dataclass defaults, then a YAML file, then `--set section.key=value`.

Every value is type-checked against its section's frozen params dataclass; unknown sections and keys
are errors listing the known ones. The sections are handed in (the runner passes the stages'): this module
knows no stage. Relative paths in a YAML file resolve against that file's folder,
relative paths given with `--set` against the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    """One params instance per config section, in stage order."""

    sections: dict[str, Any]

    def section(self, name: str) -> Any:
        return self.sections[name]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: params_to_dict(params) for name, params in self.sections.items()}


def params_to_dict(params: Any) -> dict[str, Any]:
    """JSON-ready dict of a params dataclass (tuples become lists)."""
    return {f.name: _jsonable(getattr(params, f.name)) for f in dataclasses.fields(params)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_config(
    sections: dict[str, type],
    path: Path | None = None,
    overrides: typing.Sequence[str] = (),
    resolve: typing.Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Config:
    """Build the config from defaults, an optional YAML file and `section.key=value` overrides.

    `sections` maps each section name to its params dataclass (the runner passes the stages'); `resolve` fills in
    values one section takes from another and raises a ConfigError for combinations across sections that no single
    dataclass can see.

    A field with `metadata={"follows": OTHER}` (a model's width follows the model) is reset to None, which its
    dataclass resolves, when a config sets OTHER but not the field itself: choosing another architecture must not
    keep the default architecture's width. A field with `metadata={"replaces": OTHER}` is one of two ways to say one
    thing (a latency budget in ms or as a speed-up): set by an override, it drops OTHER as the YAML file set it, so
    `--set prune.target_latency_ms=0.05` on a profile that asks for a speed-up means the budget in ms (both set in
    one layer stay an error of the dataclass). A field with `metadata={"expects": TEXT}` names what it takes in a
    type error, where the annotation alone cannot (`int | str` for "a count or auto").
    """
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    if path is not None:
        for section, key, value in _read_yaml(path, sections):
            values[section][key] = _resolve_path(section, sections[section], key, value, path.parent)
    overridden = set()
    for item in overrides:
        section, key, value = _parse_override(item, sections)
        values[section][key] = _resolve_path(section, sections[section], key, value, Path.cwd())
        overridden.add((section, key))
    for section, key in overridden:
        replaced = {field.name: field.metadata.get("replaces") for field in dataclasses.fields(sections[section])}
        if replaced[key] is not None and (section, replaced[key]) not in overridden:
            values[section].pop(replaced[key], None)
    built = {}
    for name, cls in sections.items():
        for field in dataclasses.fields(cls):
            follows = field.metadata.get("follows")
            if follows in values[name] and field.name not in values[name]:
                values[name][field.name] = None
        hints = typing.get_type_hints(cls)
        expects = {field.name: field.metadata.get("expects") for field in dataclasses.fields(cls)}
        checked = {key: coerce(f"{name}.{key}", value, hints[key], expects[key]) for key, value in values[name].items()}
        built[name] = cls(**checked)
    if resolve is not None:
        built = resolve(built)
    return Config(built)


def _read_yaml(path: Path, classes: dict[str, type]) -> list[tuple[str, str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; pass an existing YAML file") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The parser's own words and place: "not valid YAML (line 2)" left the user to find an unquoted '?' alone.
        where, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None) or "not YAML"
        place = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        raise ConfigError(
            f"config file {path} is not valid YAML ({place}{problem}); fix the syntax, quoting any value that holds "
            "'?', ': ' or ' #' (e.g. \"ssh://pi@board?python=/usr/bin/python3\")"
        ) from None
    if document is None:
        return []
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections, like 'teacher: {{epochs: 5}}'")
    items = []
    for section, body in document.items():
        _check_section(section, classes)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"section '{section}' in {path} must be a mapping of keys, got {body!r}")
        for key, value in body.items():
            _check_key(section, key, classes)
            items.append((section, key, value))
    return items


def _parse_override(item: str, classes: dict[str, type]) -> tuple[str, str, Any]:
    name, sep, raw = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"--set {item!r} must look like section.key=value, for example prune.ratio=0.5")
    _check_section(section, classes)
    _check_key(section, key, classes)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if _is_list(typing.get_type_hints(classes[section])[key]):
            # Not kept as text: it would become a one-item list of the whole bracketed text, and the error would
            # then be about that item. An unquoted '?' in an item (ssh://host?python=...) is the usual cause.
            problem = getattr(exc, "problem", None) or "not YAML"
            raise ConfigError(
                f"--set {item!r}: the list is not valid YAML ({problem}); quote its items, e.g. "
                f"--set '{section}.{key}=[local, \"ssh://pi@board?python=/usr/bin/python3\"]'"
            ) from None
        value = raw  # not YAML: keep the text, the type check below decides
    return section, key, value


def _options(annotation: Any) -> tuple:
    """The types an annotation allows: each member of a union, or the one type."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(option) is tuple for option in _options(annotation))


def _check_section(section: object, classes: dict[str, type]) -> None:
    if section not in classes:
        raise ConfigError(f"unknown config section {section!r}; known sections: {', '.join(classes)}")


def _check_key(section: str, key: object, classes: dict[str, type]) -> None:
    known = [f.name for f in dataclasses.fields(classes[section])]
    if key not in known:
        raise ConfigError(f"unknown config key {f'{section}.{key}'!r}; known keys of {section}: {', '.join(known)}")


def _resolve_path(section: str, cls: type, key: str, value: Any, base: Path) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    if field.metadata.get("path") and isinstance(value, str) and value:
        try:
            return str((base / value).resolve())
        except (ValueError, OSError):  # a NUL byte, a name too long
            raise ConfigError(f"{section}.{key}={value!r} is not a usable path; give a folder name") from None
    return value


def coerce(key: str, value: Any, annotation: Any, expects: str | None = None) -> Any:
    """Check `value` against a params annotation; return it in the annotated type or raise ConfigError.

    `expects` says what the field takes, for the error, where the annotation's types say too little.
    """
    options = _options(annotation)
    expected = expects or _describe(annotation)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} must not be null; expected {expected}")
    for option in options:
        if option is type(None):
            continue
        converted = _convert(value, option)
        if converted is not _NO:
            return converted
    hint = ""
    if isinstance(value, bool) and str in options and not expects:  # YAML 1.1 reads on/off/yes/no as booleans
        hint = " (YAML reads on, off, yes and no as true or false: quote the word)"
    raise ConfigError(f"{key}={value!r} has the wrong type; expected {expected}{hint}")


_NO = object()


def _convert(value: Any, option: Any) -> Any:
    if typing.get_origin(option) is tuple:
        (item_type, _ellipsis) = typing.get_args(option)
        items = value if isinstance(value, list | tuple) else [value]
        converted = [_convert(item, item_type) for item in items]
        return _NO if not items or _NO in converted else tuple(converted)
    if option is bool:
        return value if isinstance(value, bool) else _NO
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        return _to_float(value)
    if option is str:
        return value if isinstance(value, str) else _NO
    raise TypeError(f"unsupported params annotation {option!r}")  # a programming error, not user input


def _to_float(value: Any) -> Any:
    """A finite float, or _NO. Strings like '1e-3' count: YAML 1.1 reads exponents without a dot as text."""
    if isinstance(value, bool):
        return _NO
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _NO
    if not isinstance(value, int | float):
        return _NO
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return _NO
    return number if math.isfinite(number) else _NO


def _describe(annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    options = _options(annotation)
    parts = []
    for option in options:
        if typing.get_origin(option) is tuple:
            parts.append(
                f"a non-empty list of {names[typing.get_args(option)[0]].removeprefix('an ').removeprefix('a ')}s"
            )
        else:
            parts.append(names[option])
    return " or ".join(parts)


def reproduce_command(config: dict[str, dict[str, Any]], defaults: dict[str, dict[str, Any]]) -> str:
    """`edgeforge run` with a --set for every value that differs from the built-in defaults (every value of a
    section whose defaults are unknown: an entry cached before manifests recorded them)."""
    overrides = []
    for section, values in config.items():
        for key, value in values.items():
            if key not in defaults.get(section, {}) or value != defaults[section][key]:
                text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                overrides.append(f"--set {shlex.quote(f'{section}.{key}={text}')}")
    return " ".join(["edgeforge run", *overrides])
