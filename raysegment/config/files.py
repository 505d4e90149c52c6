"""Configs from files: YAML read as a mapping, validated once, errors one line naming the file."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from raysegment.config.run import RunConfig
from raysegment.errors import ConfigError


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: a.b.c: message`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{where}: {err['msg']}")
    return f"{source}: " + "; ".join(parts)


def parse_config(data: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """Parse a YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a YAML run config; `overrides` is a nested dict merged on top."""
    return parse_config(deep_merge(read_yaml_mapping(path), overrides or {}), str(path))


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
