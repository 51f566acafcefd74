"""Load and validate YAML job files; errors name the file, the key path and the bad value."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from quanto.errors import InputError

M = TypeVar("M", bound=BaseModel)


class ConfigError(InputError):
    """A job file that cannot be used; the message names file, key path and value."""


def _key_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line per problem: `file: key.path: message (got value)`."""
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-after")))
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {_key_path(loc)}: {msg} (got {shown})")
    return "\n".join(lines)


def parse_config(model: type[M], data: object, source: str) -> M:
    """Validate an already-parsed mapping against `model`, raising ConfigError on failure."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(model: type[M], path: str | Path) -> M:
    """Read a YAML job file and validate it."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_config(model, data, str(p))
