"""Rebuild a saved model from its meta: architecture from `model.json`, weights loaded after.

Every path that brings back a stored model (a checkpoint folder, a registry version) goes
through `rebuild`, so none of them fetches pretrained weights it is about to overwrite.
"""

from __future__ import annotations

from pathlib import Path

from raysegment.errors import CheckpointError
from raysegment.models.io import META_FILE, WEIGHTS_FILE, ModelMeta, read_meta, read_weights
from raysegment.models.segmenter import Segmenter, build_segmenter


def rebuild(meta: ModelMeta) -> Segmenter:
    """An untrained segmenter of the stored architecture (no pretrained weights fetched)."""
    return build_segmenter(meta.model.without_pretrained(), meta.num_classes)


def load_model(folder: str | Path) -> tuple[Segmenter, ModelMeta]:
    """Rebuild a saved segmenter (eval mode, CPU) and its meta."""
    meta = read_meta(str(folder))
    model = rebuild(meta)
    try:
        model.load_state_dict(read_weights(str(folder)))
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}/{WEIGHTS_FILE} does not match {META_FILE}: {str(exc)[:300]}") from exc
    return model.eval(), meta
