"""A map-style dataset of images with optional masks, validated when it is built.

Loaders only decode (torchvision.io, uint8): resizing and augmentation run later, on the training
device. An image may have no mask (an unlabelled target folder, or a partly labelled one); its item
carries an all-ignore mask made in memory, so no code path that only wants images opens a mask file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from raysegment.data.info import DatasetInfo
from raysegment.errors import DatasetError

Sample = tuple[Path, Path | None]  # (image, mask or None)


class SegmentationDataset(Dataset):
    """Items are `(image (3,H,W) uint8, mask (H,W) int64)`; an unlabelled image's mask is all ignore."""

    def __init__(self, samples: list[Sample], info: DatasetInfo) -> None:
        self.samples = [(Path(i), Path(m) if m is not None else None) for i, m in samples]
        self.info = info
        for image, mask in self.samples:
            if mask is not None:
                self._check_pair(image, mask)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        if mask_path is None:
            return image, torch.full(image.shape[1:], self.info.ignore_index, dtype=torch.long)
        return image, read_mask(mask_path)

    @property
    def labelled_count(self) -> int:
        return sum(mask is not None for _, mask in self.samples)

    def labelled(self, limit: int | None = None) -> SegmentationDataset:
        """Only the images that have masks (the first `limit` of them), for supervised training and scoring."""
        samples = [s for s in self.samples if s[1] is not None][:limit]
        if not samples:
            folder = self.samples[0][0].parent if self.samples else "the split"
            raise DatasetError(
                f"none of the {len(self)} images under {folder} has a mask; supervised training "
                f"and mIoU need labels: add masks/<stem>.png or use a label-free method"
            )
        return _derived(self, samples)

    def without_labels(self) -> SegmentationDataset:
        """The same images with their masks forgotten: nothing reading this view can open a mask."""
        return _derived(self, [(image, None) for image, _ in self.samples])

    def _check_pair(self, image: Path, mask: Path) -> None:
        image_size = _header_size(image)
        mask_size = _header_size(mask)
        if image_size != mask_size:
            raise DatasetError(
                f"{mask} is {mask_size[0]}x{mask_size[1]} but {image} is "
                f"{image_size[0]}x{image_size[1]}; masks must match their image pixel for pixel"
            )
        values = torch.unique(read_mask(mask))
        bad = [int(v) for v in values if v >= self.info.num_classes and v != self.info.ignore_index]
        if bad:
            raise DatasetError(
                f"{mask} holds label values {bad} outside [0, {self.info.num_classes}) "
                f"and not the ignore index {self.info.ignore_index}; remap them or list the "
                f"classes in dataset.json"
            )


def _derived(parent: SegmentationDataset, samples: list[Sample]) -> SegmentationDataset:
    """A dataset over already-checked samples (no second validation pass)."""
    view = SegmentationDataset.__new__(SegmentationDataset)
    view.samples, view.info = samples, parent.info
    return view


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path} is unreadable as an image ({exc}); re-export it as PNG or JPEG") from exc


def read_image(path: Path) -> torch.Tensor:
    """(3,H,W) uint8 RGB; grayscale, palette and RGBA files are converted, 16-bit ones scaled to 8 bits."""
    try:
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise DatasetError(f"{path} cannot be decoded ({exc}); re-export it as PNG or JPEG") from exc
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def read_mask(path: Path) -> torch.Tensor:
    """(H,W) int64 class ids, read from a single-channel PNG."""
    try:
        return decode_image(str(path), mode=ImageReadMode.GRAY)[0].long()
    except RuntimeError as exc:
        raise DatasetError(f"{path} cannot be decoded ({exc}); masks are single-channel PNGs") from exc


class Batch(NamedTuple):
    """A collated batch. images (B,3,H,W) uint8 zero-padded to the largest item; masks (B,H,W) int64
    ignore-padded; sizes (B,2) int64, each item's own (H,W) before padding."""

    images: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.masks.to(device, non_blocking=non_blocking),
            self.sizes,
        )


def pad_collate(items: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = 255) -> Batch:
    """Stack items, padding smaller ones (image 0, mask ignore) so mixed sizes batch."""
    h = max(img.shape[1] for img, _ in items)
    w = max(img.shape[2] for img, _ in items)
    images = torch.zeros(len(items), 3, h, w, dtype=torch.uint8)
    masks = torch.full((len(items), h, w), ignore_index, dtype=torch.long)
    for i, (img, mask) in enumerate(items):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        masks[i, : mask.shape[0], : mask.shape[1]] = mask
    sizes = torch.tensor([[img.shape[1], img.shape[2]] for img, _ in items], dtype=torch.long)
    return Batch(images, masks, sizes)
