"""What every command area shares: `--set` overrides, the registry and Ray Jobs address options."""

from __future__ import annotations

import argparse
import os

import yaml

from raysegment.errors import ConfigError

EXIT_USAGE = 2


def _parse_overrides(pairs: list[str]) -> dict:
    """`a.b=3` -> {"a": {"b": 3}}; values are parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


REGISTRY_ENV, JOBS_ADDRESS_ENV = "RAYSEGMENT_REGISTRY", "RAY_API_SERVER_ADDRESS"


def registry_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=os.environ.get(REGISTRY_ENV, "registry"), help=f"default: ${REGISTRY_ENV}")


def address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get(JOBS_ADDRESS_ENV, "http://127.0.0.1:8265"))
