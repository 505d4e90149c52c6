"""A map-style dataset of images with optional masks, validated when it is built.

Loaders only decode (torchvision.io, uint8): resizing and augmentation run later, on the training
device. Files are local paths or object URIs (`data.files`): a local pair is checked when the
dataset is built; a pair in a bucket is checked as it is decoded (the same checks), so opening a
bucket's split costs one listing, not a GET of every mask. An image may have no mask (an
unlabelled target folder, or a partly labelled one); its item carries an all-ignore mask made in
memory, so no code path that only wants images opens a mask file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from raysegment.data import files
from raysegment.data.files import Location
from raysegment.data.info import DatasetInfo
from raysegment.errors import DatasetError

Sample = tuple[Location, Location | None]  # (image, mask or None)


class SegmentationDataset(Dataset):
    """Items are `(image (3,H,W) uint8, mask (H,W) int64)`; an unlabelled image's mask is all ignore."""

    def __init__(self, samples: list[Sample], info: DatasetInfo) -> None:
        self.samples = [(files.location(i), files.location(m) if m is not None else None) for i, m in samples]
        self.info = info
        for image, mask in self.samples:
            if isinstance(mask, Path):
                self._check_pair(image, mask)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        if files.is_remote(image_path) or (mask_path is not None and files.is_remote(mask_path)):
            mask_bytes = files.read(mask_path) if mask_path is not None else None
            return self.decode(files.read(image_path), mask_bytes, image_path, mask_path)
        image = read_image(image_path)
        if mask_path is None:
            return image, torch.full(image.shape[1:], self.info.ignore_index, dtype=torch.long)
        return image, read_mask(mask_path)

    def decode(
        self, image: bytes, mask: bytes | None, image_at: Location = "image", mask_at: Location | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One item from its files' bytes, the pair checked as `_check_pair` checks a local one: how
        items read from object storage are made (here, and in the Ray Data ingest's decode tasks)."""
        picture = read_image(image, image_at)
        if mask is None:
            return picture, torch.full(picture.shape[1:], self.info.ignore_index, dtype=torch.long)
        labels = read_mask(mask, mask_at or "mask")
        if labels.shape != picture.shape[1:]:
            raise DatasetError(
                f"{mask_at} is {labels.shape[1]}x{labels.shape[0]} but {image_at} is "
                f"{picture.shape[2]}x{picture.shape[1]}; masks must match their image pixel for pixel"
            )
        self._check_values(labels, mask_at or "mask")
        return picture, labels

    def verify(self) -> int:
        """Read and check every pair not checked at open (those in a bucket); returns how many."""
        remote = [i for i, (image, mask) in enumerate(self.samples) if files.is_remote(image) and mask is not None]
        for index in remote:
            self[index]
        return len(remote)

    @property
    def labelled_count(self) -> int:
        return sum(mask is not None for _, mask in self.samples)

    def stem(self, index: int) -> str:
        """The file stem of image `index` (how splits, selections and pre-labels name it)."""
        return files.stem(self.samples[index][0])

    def labelled(self, limit: int | None = None) -> SegmentationDataset:
        """Only the images that have masks (the first `limit` of them), for supervised training and scoring."""
        samples = [s for s in self.samples if s[1] is not None][:limit]
        if not samples:
            folder = files.parent(self.samples[0][0]) if self.samples else "the split"
            raise DatasetError(
                f"none of the {len(self)} images under {folder} has a mask; supervised training "
                f"and mIoU need labels: add masks/<stem>.png or use a label-free method"
            )
        return _derived(self, samples)

    def without_labels(self) -> SegmentationDataset:
        """The same images with their masks forgotten: nothing reading this view can open a mask."""
        return _derived(self, [(image, None) for image, _ in self.samples])

    def _check_pair(self, image: Location, mask: Path) -> None:
        image_size = _header_size(image)
        mask_size = _header_size(mask)
        if image_size != mask_size:
            raise DatasetError(
                f"{mask} is {mask_size[0]}x{mask_size[1]} but {image} is "
                f"{image_size[0]}x{image_size[1]}; masks must match their image pixel for pixel"
            )
        self._check_values(read_mask(mask), mask)

    def _check_values(self, labels: torch.Tensor, mask: Location) -> None:
        info = self.info
        outside = (labels >= info.num_classes) & (labels != info.ignore_index)
        if bool(outside.any()):
            bad = sorted(int(v) for v in torch.unique(labels[outside]))
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


def _header_size(path: Location) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path} is unreadable as an image ({exc}); re-export it as PNG or JPEG") from exc


def _encoded(source: Location | bytes) -> str | torch.Tensor:
    """What torchvision's decoder takes: a local file's name, or the bytes of a file (read from a
    bucket here when `source` is a URI)."""
    if isinstance(source, Path):
        return str(source)
    data = files.read(source) if isinstance(source, str) else source
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_image(source: Location | bytes, where: Location = "image") -> torch.Tensor:
    """(3,H,W) uint8 RGB from a file, an object or encoded bytes; grayscale, palette and RGBA files
    are converted, 16-bit ones scaled to 8 bits."""
    where = where if isinstance(source, bytes) else source
    try:
        image = decode_image(_encoded(source), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise DatasetError(f"{where} cannot be decoded ({exc}); re-export it as PNG or JPEG") from exc
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def read_mask(source: Location | bytes, where: Location = "mask") -> torch.Tensor:
    """(H,W) int64 class ids from a single-channel PNG (a file, an object or encoded bytes)."""
    where = where if isinstance(source, bytes) else source
    try:
        return decode_image(_encoded(source), mode=ImageReadMode.GRAY)[0].long()
    except RuntimeError as exc:
        raise DatasetError(f"{where} cannot be decoded ({exc}); masks are single-channel PNGs") from exc


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
