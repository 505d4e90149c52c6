"""Cross-domain mixing for self-training, on whole batches on the training device.

- ClassMix (Olsson et al. 2021): paste the pixels of half the classes of a source image onto a
  target image; the mixed label takes source labels there and target pseudo-labels elsewhere.
- FDA (Yang & Soatto 2020): give a source image the target's low-frequency amplitude spectrum
  (its global "style": colour cast, haze, brightness) while keeping the source phase (content).
- A strong photometric augmentation for the student's view (labels are unaffected).
"""

from __future__ import annotations

from typing import overload

import kornia.augmentation as K
import torch
from torch import nn

from raysegment.augment.resize import resize_images, resize_masks


@overload
def match_batch(
    images: torch.Tensor, masks: torch.Tensor, count: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def match_batch(images: torch.Tensor, masks: None, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, None]: ...
def match_batch(
    images: torch.Tensor, masks: torch.Tensor | None, count: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring a batch to `count` items of `size` so it pairs item by item with another domain's batch.

    images (b,3,h,w) float, masks (b,h,w) int64 or None. A short batch repeats its items
    (0,1,..,b-1,0,1,..), a long one keeps its first `count`; sizes are resized (masks nearest).
    """
    index = torch.arange(count, device=images.device) % images.shape[0]
    images = resize_images(images[index], size)
    return images, (resize_masks(masks[index], size) if masks is not None else None)


def class_mix(
    source: torch.Tensor,
    source_labels: torch.Tensor,
    target: torch.Tensor,
    target_labels: torch.Tensor,
    target_weights: torch.Tensor,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each source image into the target image of the same index (pair batches with `match_batch`).

    source, target: (B,3,H,W) float, the same B, H and W; source_labels, target_labels: (B,H,W) int64;
    target_weights: (B,H,W) float pseudo-label confidence weights.
    Returns (images, labels, pixel weights): source pixels weigh 1, target pixels their weight.
    """
    if source.shape != target.shape or source_labels.shape != target_labels.shape:
        raise ValueError(
            f"class_mix pairs items: source {tuple(source.shape)} and target {tuple(target.shape)} "
            f"differ; align them with match_batch first"
        )
    masks = torch.zeros_like(source_labels, dtype=torch.bool)
    for i in range(source.shape[0]):
        present = source_labels[i].unique()
        present = present[present != ignore_index]
        if present.numel() == 0:
            continue
        order = torch.randperm(present.numel(), generator=generator, device="cpu").to(present.device)
        chosen = present[order[: max(1, (present.numel() + 1) // 2)]]
        masks[i] = torch.isin(source_labels[i], chosen)
    m = masks.unsqueeze(1)
    images = torch.where(m, source, target)
    labels = torch.where(masks, source_labels, target_labels)
    weights = torch.where(masks, torch.ones_like(target_weights), target_weights)
    return images, labels, weights


def fourier_domain_adaptation(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Swap the lowest `beta` share of the amplitude spectrum of `source` (B,3,H,W) for `target`'s.

    beta = 0 returns `source` unchanged; 0.01-0.09 is the useful range (Yang & Soatto use 0.01).
    """
    if beta <= 0:
        return source
    h, w = source.shape[-2:]
    b = max(1, int(min(h, w) * beta))
    fs = torch.fft.fft2(source.float())
    ft = torch.fft.fft2(target.float())
    amp_s, phase_s = fs.abs(), fs.angle()
    amp_t = ft.abs()
    for ys in (slice(0, b), slice(h - b, h)):  # the four corners of the unshifted spectrum
        for xs in (slice(0, b), slice(w - b, w)):
            amp_s[..., ys, xs] = amp_t[..., ys, xs]
    mixed = torch.fft.ifft2(torch.polar(amp_s, phase_s)).real
    return mixed.clamp(0, 1).to(source.dtype)


def photometric_augment(strength: float = 0.4) -> nn.Module:
    """Colour jitter + blur + noise: changes pixels, never geometry, so labels stay aligned."""
    s = strength
    return K.AugmentationSequential(
        K.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4), p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=0.5),
        K.RandomGaussianNoise(std=0.02, p=0.5),
    )
