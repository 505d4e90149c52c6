"""Upload decoding: sizes checked from the header before any pixel is decoded; odd modes to RGB."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from raysegment.serving.imaging import BadImage, BadShape, ImageTooLarge, decode_upload, header_size


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = _encode(Image.new("1", (9_000, 9_000)))  # ~10 KB here, 243 MB as decoded RGB
    assert len(bomb) < 100_000 and header_size(bomb) == (9_000, 9_000)
    with pytest.raises(ImageTooLarge, match="read from the header"):
        decode_upload(bomb, max_pixels=4096 * 4096)
    with pytest.raises(ImageTooLarge):  # 400 Mpx: refused by the header reader itself
        decode_upload(_encode(Image.new("1", (20_000, 20_000))), max_pixels=4096 * 4096)


def test_extreme_aspect_ratios_and_garbage_are_refused():
    with pytest.raises(BadShape, match="aspect ratio"):
        decode_upload(_encode(Image.new("RGB", (60_000, 1))), max_pixels=10**9)
    with pytest.raises(BadImage, match="magic bytes"):
        decode_upload(b"GIF89a....")
    with pytest.raises(BadImage):
        decode_upload(_encode(Image.new("RGB", (40, 30)))[:50])


def test_exif_rotation_is_applied_to_jpegs():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_upload(_encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.shape == (3, 40, 20)  # displayed upright: 20 wide, 40 high


def test_16_bit_pngs_are_scaled_not_truncated():
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    decoded = decode_upload(_encode(Image.fromarray(values)))
    assert decoded.dtype == torch.uint8 and abs(int(decoded.max()) - 63_000 / 257) <= 1  # 16 bits -> 8, not cut
