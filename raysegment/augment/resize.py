"""The model's working scale, applied on whatever device the batch lives on.

Training resizes each item of a padded batch by its own factor (`ResizeConfig.factor`), so a
1024x2048 set trains at a chosen scale without a CPU resize per image. Scoring and adaptation go
through `same_size_groups`: items of one size are resized together and never padded, so padding
pixels reach neither BatchNorm statistics nor predictions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from raysegment.config import ResizeConfig


def scaled_size(height: int, width: int, resize: ResizeConfig | None) -> tuple[int, int]:
    if resize is None:
        return height, width
    f = resize.factor(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """images (B,3,H,W) float -> (B,3,*size), antialiased when shrinking."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """masks (B,H,W) int64 -> (B,*size), nearest neighbour (labels are never blended)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def resize_batch(
    images: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, resize: ResizeConfig | None, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batch -> the same batch at working scale, re-padded (image 0, mask ignore).

    images (B,3,H,W) float, masks (B,H,W) int64, sizes (B,2) each item's size before padding.
    """
    if resize is None:
        return images, masks
    targets = [scaled_size(int(h), int(w), resize) for h, w in sizes.tolist()]
    if len(set(targets)) == 1 and all(tuple(s) == tuple(images.shape[-2:]) for s in sizes.tolist()):
        return resize_images(images, targets[0]), resize_masks(masks, targets[0])  # one call for the batch
    h, w = max(t[0] for t in targets), max(t[1] for t in targets)
    out_images = images.new_zeros(images.shape[0], 3, h, w)
    out_masks = masks.new_full((masks.shape[0], h, w), ignore_index)
    for i, ((ih, iw), (th, tw)) in enumerate(zip(sizes.tolist(), targets)):
        out_images[i, :, :th, :tw] = resize_images(images[i : i + 1, :, :ih, :iw], (th, tw))[0]
        out_masks[i, :th, :tw] = resize_masks(masks[i : i + 1, :ih, :iw], (th, tw))[0]
    return out_images, out_masks


def group_by_size(sizes: Iterable[Iterable[int]]) -> dict[tuple[int, int], list[int]]:
    """Item indices per distinct (H, W), in first-seen order: each group runs as one unpadded tensor."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault((h, w), []).append(i)
    return groups


def same_size_groups(
    images: torch.Tensor, sizes: torch.Tensor, resize: ResizeConfig | None
) -> Iterator[tuple[list[int], torch.Tensor, tuple[int, int]]]:
    """Yield (item indices, their images cropped to their own size and resized, their full size).

    images (B,3,H,W) float padded; each group is (b,3,h',w') with no padding at all.
    """
    for (h, w), index in group_by_size(sizes.tolist()).items():
        crop = images[index, :, :h, :w]
        yield index, resize_images(crop, scaled_size(h, w, resize)), (h, w)
