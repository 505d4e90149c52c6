"""Segmenters: a timm `features_only` backbone -> decoder -> 1x1 head, plus weights and freezing."""

from raysegment.models.segmenter import Segmenter, build_segmenter
from raysegment.models.io import ModelMeta, load_model, save_model

__all__ = ["ModelMeta", "Segmenter", "build_segmenter", "load_model", "save_model"]
