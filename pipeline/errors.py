"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class EdgeforgeError(Exception):
    """An expected failure: the message names the value and the fix."""

    exit_code = 1


class ConfigError(EdgeforgeError):
    """Bad user input: unknown key, wrong type or range, unknown name."""

    exit_code = 2


class StageError(EdgeforgeError):
    """A stage could not produce its artifact (nothing was published)."""

    exit_code = 1


class SignoffFailed(EdgeforgeError):
    """Everything was written, but at least one sign-off gate failed."""

    exit_code = 1


def require(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise a ConfigError naming `key`, its `value` and what is `expected` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {expected}")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type's name): what a one-line error quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
