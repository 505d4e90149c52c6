"""A map-style dataset of (image, mask) pairs, validated when it is built.

Loaders only decode (torchvision.io, uint8): augmentation runs later, on the training device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from raysegment.data.info import DatasetInfo
from raysegment.errors import DatasetError


class SegmentationDataset(Dataset):
    """Items are `(image (3,H,W) uint8, mask (H,W) int64)`."""

    def __init__(self, pairs: list[tuple[Path, Path]], info: DatasetInfo, validate: bool = True) -> None:
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.info = info
        if validate:
            for image, mask in self.pairs:
                self._check_pair(image, mask)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pairs[index]
        return read_image(image), read_mask(mask)

    def _check_pair(self, image: Path, mask: Path) -> None:
        image_size = _header_size(image)
        mask_size = _header_size(mask)
        if image_size != mask_size:
            raise DatasetError(f"{mask} is {mask_size[0]}x{mask_size[1]} but {image} is "
                               f"{image_size[0]}x{image_size[1]}; masks must match their image pixel for pixel")
        values = torch.unique(read_mask(mask))
        bad = [int(v) for v in values if v >= self.info.num_classes and v != self.info.ignore_index]
        if bad:
            raise DatasetError(f"{mask} holds label values {bad} outside [0, {self.info.num_classes}) "
                               f"and not the ignore index {self.info.ignore_index}; remap them or list the "
                               f"classes in dataset.json")


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path} is unreadable as an image ({exc}); re-export it as PNG or JPEG") from exc


def read_image(path: Path) -> torch.Tensor:
    """(3,H,W) uint8 RGB."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise DatasetError(f"{path} cannot be decoded ({exc}); re-export it as PNG or JPEG") from exc


def read_mask(path: Path) -> torch.Tensor:
    """(H,W) int64 class ids, read from a single-channel PNG."""
    try:
        return decode_image(str(path), mode=ImageReadMode.GRAY)[0].long()
    except RuntimeError as exc:
        raise DatasetError(f"{path} cannot be decoded ({exc}); masks are single-channel PNGs") from exc


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = 255
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items, padding smaller ones (image 0, mask ignore) so mixed sizes batch."""
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=torch.uint8)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.long)
    for i, (img, mask) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        masks[i, : mask.shape[0], : mask.shape[1]] = mask
    return images, masks


class UnlabelledView(Dataset):
    """The images of a dataset with every mask pixel set to the ignore index.

    Label-free adaptation reads target images through this view, so no code path can learn from
    (or be judged by) target labels that a team would not have.
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset, self.info = dataset, dataset.info

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[index]
        return image, torch.full(image.shape[1:], self.info.ignore_index, dtype=torch.long)
