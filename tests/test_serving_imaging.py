"""Upload decoding: sizes checked from the header before any pixel is decoded; odd modes to RGB."""

import io

import numpy as np
import pytest
import torch
from conftest import gray_png, many_scan_jpeg, png_chunk
from PIL import Image

from raysegment.serving.imaging import (
    MAX_JPEG_SCANS,
    BadImage,
    BadShape,
    ImageTooLarge,
    UnsupportedImage,
    decode_upload,
    header_size,
    jpeg_scan_count,
)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = _encode(Image.new("1", (9_000, 9_000)))  # ~10 KB here, 243 MB as decoded RGB
    assert len(bomb) < 100_000 and header_size(bomb) == (9_000, 9_000, 1)
    with pytest.raises(ImageTooLarge, match="read from the header"):
        decode_upload(bomb, max_pixels=4096 * 4096)
    with pytest.raises(ImageTooLarge):  # 400 Mpx: refused by the header reader itself
        decode_upload(_encode(Image.new("1", (20_000, 20_000))), max_pixels=4096 * 4096)


def test_extreme_aspect_ratios_and_garbage_are_refused():
    with pytest.raises(BadShape, match="aspect ratio"):
        decode_upload(_encode(Image.new("RGB", (60_000, 1))), max_pixels=10**9)
    with pytest.raises(BadImage, match="magic bytes"):
        decode_upload(b"hello world")
    with pytest.raises(BadImage):
        decode_upload(_encode(Image.new("RGB", (40, 30)))[:50])


def test_exif_rotation_is_applied_to_jpegs():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_upload(_encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.shape == (3, 40, 20)  # displayed upright: 20 wide, 40 high


def test_16_bit_pngs_are_scaled_not_truncated():
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    decoded = decode_upload(_encode(Image.fromarray(values)))
    assert decoded.dtype == torch.uint8 and abs(int(decoded.max()) - 63_000 / 257) <= 1  # 16 bits -> 8, not cut


def test_jpegs_of_too_many_scans_are_refused_before_decoding():
    plain = _encode(Image.new("RGB", (64, 48), (10, 200, 30)), "JPEG", progressive=True)
    thumb = _encode(Image.new("RGB", (16, 16)), "JPEG", progressive=True)  # a JPEG inside EXIF: not counted
    exif = Image.Exif()
    exif[0x010E] = thumb.decode("latin-1")
    with_thumb = _encode(Image.new("RGB", (64, 48)), "JPEG", exif=exif.tobytes())
    assert 2 <= jpeg_scan_count(plain) <= 12 and jpeg_scan_count(with_thumb) == 1
    assert decode_upload(plain).shape == (3, 48, 64)
    bomb = many_scan_jpeg((64, 48), repeats=5_000)
    assert jpeg_scan_count(bomb) == MAX_JPEG_SCANS + 1  # stops counting past the limit
    with pytest.raises(BadShape, match="scans"):
        decode_upload(bomb)


def test_gif_webp_and_animated_pngs_are_unsupported_not_garbage():
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt, name in (("GIF", "GIF"), ("WEBP", "WebP")):
        with pytest.raises(UnsupportedImage, match=f"{name} images are not accepted"):
            decode_upload(_encode(frames[0], fmt))
    apng = _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedImage, match="animated PNG of 2 frames"):
        decode_upload(apng)
    assert decode_upload(_encode(frames[1], "PNG"))[2].float().mean() == 255  # a still PNG is fine


def test_a_bad_row_filter_byte_is_a_bad_image_not_a_crash():
    """libpng (under torchvision) took the whole process down on this one: 4000x4000, last row bad."""
    with pytest.raises(BadImage, match="cannot be decoded"):
        decode_upload(gray_png(4000, 4000, bad_filter=True))


def test_ancillary_chunks_are_skipped_however_large():
    import zlib

    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(64 * 2**20)))  # 64 MB of text, inflated
    image = decode_upload(gray_png(40, 24, extra=text))
    assert image.shape == (3, 24, 40) and image.dtype == torch.uint8


def test_a_png_chunk_running_past_the_end_is_a_bad_image():
    whole = gray_png(40, 24)
    with pytest.raises(BadImage):
        decode_upload(whole[:40] + b"\xff\xff\xff\x00IDAT" + whole[48:60])
