"""Bytes in, bytes out: decode uploads, encode masks and overlays (no Ray, no HTTP)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, encode_png
from torchvision.transforms.v2.functional import to_dtype

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


class ImageTooLarge(BadImage):
    """The header declares more pixels than the server accepts (checked before decoding)."""


class BadShape(BadImage):
    """A decodable image the model cannot sensibly run on (an extreme aspect ratio)."""


MAX_ASPECT_RATIO = 16  # 1x60000 strips would pad to giant tensors and segment nothing meaningful


def header_size(body: bytes) -> tuple[int, int]:
    """(width, height) from the PNG/JPEG header alone: nothing is decompressed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as img:
                return img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"header declares a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"image header cannot be read (truncated or corrupt): {str(exc)[:160]}") from exc


def decode_upload(body: bytes, max_pixels: int = 4096 * 4096) -> torch.Tensor:
    """PNG/JPEG bytes -> (3,H,W) uint8 RGB, after checking the header's size: too many pixels is
    ImageTooLarge, an extreme aspect ratio BadShape, anything undecodable BadImage. Grayscale,
    palette, RGBA and 16-bit PNGs become 8-bit RGB; EXIF orientation is applied to JPEGs."""
    kind = sniff(body)
    if kind is None:
        raise BadImage("body is not a PNG or JPEG image (magic bytes do not match)")
    width, height = header_size(body)
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} px > limit {max_pixels} px (read from the header, not decoded)")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadShape(f"{width}x{height} px: aspect ratio beyond {MAX_ASPECT_RATIO}:1; crop or tile the image")
    try:
        image = decode_image(torch.frombuffer(bytearray(body), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=kind == "image/jpeg")
    except RuntimeError as exc:
        raise BadImage(f"image cannot be decoded (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from exc
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


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
