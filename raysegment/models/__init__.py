"""Segmenters: a timm `features_only` backbone -> decoder -> 1x1 head, plus weights and freezing.

The names below are imported on first use (PEP 562), so `raysegment.models.io` alone (what the
registry needs to move aliases) does not import timm. `rebuild` is imported from its module
(`raysegment.models.rebuild`), whose name it shares.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysegment.models.io import ModelMeta, save_model
    from raysegment.models.rebuild import load_model
    from raysegment.models.segmenter import Segmenter, build_segmenter

HOMES = {
    "ModelMeta": "raysegment.models.io",
    "save_model": "raysegment.models.io",
    "load_model": "raysegment.models.rebuild",
    "Segmenter": "raysegment.models.segmenter",
    "build_segmenter": "raysegment.models.segmenter",
}
__all__ = ["ModelMeta", "Segmenter", "build_segmenter", "load_model", "save_model"]


def __getattr__(name: str) -> Any:
    if name in HOMES:
        return getattr(import_module(HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
