"""Datasets on disk: the raysegment domain layout, Cityscapes and ACDC, and a synthetic generator."""

from raysegment.data.dataset import Batch, SegmentationDataset, pad_collate
from raysegment.data.info import DatasetInfo
from raysegment.data.sampler import EpochSampler, RareClassSampler
from raysegment.data.sources import list_domains, open_labelled, open_split

__all__ = [
    "Batch",
    "DatasetInfo",
    "EpochSampler",
    "RareClassSampler",
    "SegmentationDataset",
    "list_domains",
    "open_labelled",
    "open_split",
    "pad_collate",
]
