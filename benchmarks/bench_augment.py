"""Kornia batch augmentation on the training device vs torchvision per-sample transforms in
DataLoader worker processes. Prints images/s for both and their ratio, measured in this run.

    python benchmarks/bench_augment.py [--device cuda] [--batch 32] [--size 256] [--batches 8]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset

from raysegment.augment import SegmentationAugment
from raysegment.config import AugmentConfig


class RandomImages(Dataset):
    def __init__(self, n: int, size: int, transform=None) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g)
        self.masks = torch.randint(0, 7, (16, size, size), generator=g)
        self.n, self.transform = n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        image, mask = self.images[i % 16], self.masks[i % 16]
        if self.transform is None:
            return image, mask
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = args.batch * args.batches
    crop = (args.size * 3 // 4, args.size * 3 // 4)
    device = torch.device(args.device)

    # Kornia: loader only collates uint8, the batch is augmented on the device.
    aug = SegmentationAugment(
        AugmentConfig(crop=crop, rotate_degrees=0, scale=(1, 1), jitter=0.3, blur_p=1.0, noise_std=0), ignore_index=255
    ).to(device)
    loader = DataLoader(RandomImages(n, args.size), batch_size=args.batch, num_workers=0)
    for images, masks in loader:  # warm-up
        aug(images.to(device), masks.to(device))
        break
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images, masks in loader:
        out, _ = aug(images.to(device, non_blocking=True), masks.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    kornia_ips = n / (time.perf_counter() - start)

    # torchvision v2 per sample inside worker processes (the usual CPU pipeline).
    tv = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomResizedCrop(crop, scale=(0.5, 1.0), antialias=True),
            T.ColorJitter(0.3, 0.3, 0.3, 0.075),
            T.GaussianBlur(5, (0.1, 1.5)),
        ]
    )
    loader = DataLoader(
        RandomImages(n, args.size, tv),
        batch_size=args.batch,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    iter(loader).__next__()  # start workers
    start = time.perf_counter()
    for images, _masks in loader:
        images.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tv_ips = n / (time.perf_counter() - start)

    print(
        f"device={device} batch={args.batch} size={args.size} threads={torch.get_num_threads()} workers={args.workers}"
    )
    print(f"kornia on-device batch    {kornia_ips:8.1f} img/s")
    print(f"torchvision per-sample    {tv_ips:8.1f} img/s ({args.workers} loader workers)")
    print(f"ratio kornia/torchvision  {kornia_ips / tv_ips:8.2f}x")


if __name__ == "__main__":
    main()
