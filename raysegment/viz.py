"""Pictures people would rather look at than read: overlays, score bars, learning curves (PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def colorize(mask: torch.Tensor, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H,W) class ids -> (H,W,3) uint8; ignored pixels black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    out = table[mask.cpu().numpy().clip(0, 255).astype(np.uint8)]
    out[mask.cpu().numpy() == ignore_index] = 0
    return out


def overlay_png(
    path: str | Path,
    image: torch.Tensor,
    mask: torch.Tensor,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    title: str = "",
    alpha: float = 0.55,
) -> Path:
    """Write image | image+mask blend with a legend of the classes present."""
    img = image.permute(1, 2, 0).cpu().numpy()
    img = img.astype(np.float32) / 255 if img.dtype == np.uint8 else img
    colours = colorize(mask, palette).astype(np.float32) / 255
    blend = (1 - alpha) * img + alpha * colours
    h, w = mask.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4, 4 * h / w + 0.8), dpi=100)
    for ax, pic, name in zip(axes, (img, blend), ("input", "prediction")):
        ax.imshow(pic.clip(0, 1))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    present = sorted(int(c) for c in torch.unique(mask) if int(c) < len(classes))
    handles = [Patch(color="#{:02x}{:02x}{:02x}".format(*palette[c][:3]), label=classes[c]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7) or 1, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, path)


def contact_sheet_png(
    path: str | Path,
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    titles: Sequence[str],
    palette: Sequence[Sequence[int]],
    title: str = "",
    alpha: float = 0.45,
    columns: int = 4,
) -> Path:
    """A grid of images (3,H,W) with their masks (H,W) blended on, one title each."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.6 * rows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, mask, name in zip(axes.flat, images, masks, titles):
        img = image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255
        blend = (1 - alpha) * img + alpha * colorize(mask, palette).astype(np.float32) / 255
        ax.imshow(blend.clip(0, 1))
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def bar_chart_png(
    path: str | Path,
    scores: Mapping[str, Mapping[str, float]],
    title: str = "mIoU per domain",
    ylabel: str = "mIoU (%)",
) -> Path:
    """`scores[series][domain] -> value`: grouped bars, one group per domain."""
    series = list(scores)
    domains = list(dict.fromkeys(d for s in series for d in scores[s]))
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(domains)) + 2.2, 4), dpi=100)
    for i, name in enumerate(series):
        values = [scores[name].get(d, np.nan) for d in domains]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, domains)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # never over the bars
    fig.tight_layout()
    return _save(fig, path)


def curves_png(
    path: str | Path, curves: Mapping[str, Sequence[float]], title: str, ylabel: str, xlabel: str = "epoch"
) -> Path:
    """One line per named series over epochs (or rounds: `xlabel`)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
