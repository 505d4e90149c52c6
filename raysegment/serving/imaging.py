"""Bytes in, bytes out: decode uploads, encode masks and overlays (no Ray, no HTTP)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, encode_png

from raysegment.errors import RaySegmentError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class BadImage(RaySegmentError):
    """The upload is not a decodable PNG/JPEG."""


def sniff(body: bytes) -> str | None:
    if body.startswith(PNG_MAGIC):
        return "image/png"
    if body.startswith(JPEG_MAGIC):
        return "image/jpeg"
    return None


def decode_upload(body: bytes) -> torch.Tensor:
    """PNG/JPEG bytes -> (3,H,W) uint8; anything else (or a truncated file) is BadImage."""
    if sniff(body) is None:
        raise BadImage("body is not a PNG or JPEG image (magic bytes do not match)")
    try:
        return decode_image(torch.frombuffer(bytearray(body), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise BadImage(f"image cannot be decoded (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from exc


def mask_png(mask: torch.Tensor) -> bytes:
    """(H,W) class ids -> single-channel PNG of class indices."""
    return encode_png(mask.to(torch.uint8)[None].contiguous()).numpy().tobytes()


def overlay_png(image: torch.Tensor, mask: torch.Tensor, palette: list, alpha: float = 0.5) -> bytes:
    table = np.zeros((256, 3), np.float32)
    table[: len(palette)] = np.asarray(palette, np.float32)
    colours = torch.from_numpy(table[mask.numpy().astype(np.uint8)]).permute(2, 0, 1)
    blend = ((1 - alpha) * image.float() + alpha * colours).round().clamp(0, 255).to(torch.uint8)
    return encode_png(blend.contiguous()).numpy().tobytes()


def class_shares(mask: torch.Tensor, classes: list[str]) -> dict[str, float]:
    counts = torch.bincount(mask.flatten(), minlength=len(classes)).double()
    return {name: float(c / counts.sum()) for name, c in zip(classes, counts[: len(classes)])}
