"""timm backbone names, checked before anything is built (a typo gets the close names, not a stack)."""

from __future__ import annotations

import difflib

import timm

from raysegment.errors import ModelError


def check_backbone_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ModelError(f"timm does not know backbone {name!r}{hint}")
