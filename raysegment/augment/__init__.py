"""On-device augmentation: working-scale resizing, joint image+mask transforms (Kornia) and cross-domain mixing."""

from raysegment.augment.joint import SegmentationAugment, to_float
from raysegment.augment.mixing import class_mix, fourier_domain_adaptation, match_batch, photometric_augment
from raysegment.augment.resize import (
    group_by_size,
    resize_batch,
    resize_images,
    resize_masks,
    same_size_groups,
    scaled_size,
)

__all__ = [
    "SegmentationAugment",
    "class_mix",
    "fourier_domain_adaptation",
    "group_by_size",
    "match_batch",
    "photometric_augment",
    "resize_batch",
    "resize_images",
    "resize_masks",
    "same_size_groups",
    "scaled_size",
    "to_float",
]
