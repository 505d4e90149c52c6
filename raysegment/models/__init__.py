"""Segmenters: a timm `features_only` backbone -> decoder -> 1x1 head, plus weights and freezing."""

from raysegment.models.io import ModelMeta, save_model
from raysegment.models.rebuild import load_model, rebuild
from raysegment.models.segmenter import Segmenter, build_segmenter

__all__ = ["ModelMeta", "Segmenter", "build_segmenter", "load_model", "rebuild", "save_model"]
