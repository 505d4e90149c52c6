"""On-device augmentation: joint image+mask transforms (Kornia) and cross-domain mixing."""

from raysegment.augment.joint import SegmentationAugment, to_float
from raysegment.augment.mixing import class_mix, fourier_domain_adaptation, photometric_augment

__all__ = ["SegmentationAugment", "class_mix", "fourier_domain_adaptation", "photometric_augment", "to_float"]
