"""Bytes in, bytes out: decode uploads, encode masks and overlays (no Ray, no HTTP)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, encode_png
from torchvision.transforms.v2.functional import to_dtype

from raysegment.errors import RaySegmentError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class BadImage(RaySegmentError):
    """The upload is not a decodable PNG/JPEG."""


class UnsupportedImage(BadImage):
    """A well-formed image of a kind the model does not take (GIF, WebP, an animation): 415."""


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
MAX_JPEG_SCANS = 64  # encoders write 1 (baseline) or ~10 (progressive); each scan re-walks the whole image
OTHER_FORMATS = {b"GIF8": "GIF", b"RIFF": "WebP", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def jpeg_scan_count(body: bytes, stop_after: int = MAX_JPEG_SCANS + 1) -> int:
    """How many scans (SOS segments) the JPEG holds, counted by walking its markers, not decoding.

    A progressive JPEG with tens of thousands of scans costs a full pass over the image per scan;
    libjpeg has no scan limit of its own, so the count is checked before decoding. Metadata segments
    (an EXIF thumbnail is itself a JPEG) are skipped by their length, never searched."""
    scans, i, n = 0, 2, len(body)
    while i + 4 <= n and scans < stop_after:
        if body[i] != 0xFF:
            return scans  # not at a marker: corrupt; the decoder will say so
        marker = body[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        i += 2 + int.from_bytes(body[i + 2 : i + 4], "big")
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next real marker
            scans += 1
            while True:  # inside it 0xFF is followed by 0x00 (stuffing) or RST0-7; anything else is a marker
                i = body.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return scans
                if body[i + 1] == 0x00 or 0xD0 <= body[i + 1] <= 0xD7:
                    i += 2
                    continue
                break
    return scans


def header_size(body: bytes) -> tuple[int, int, int]:
    """(width, height, frames) from the PNG/JPEG header alone: nothing is decompressed (an animated
    PNG declares its frame count in the `acTL` chunk before the first image data)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as img:
                return img.size[0], img.size[1], getattr(img, "n_frames", 1)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"header declares a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"image header cannot be read (truncated or corrupt): {str(exc)[:160]}") from exc


# PNG chunks a decoder needs (critical ones, transparency, the animation header that marks an APNG);
# every other ancillary chunk (text, EXIF, colour profiles) is dropped before decoding: a 64 MB zTXt
# must not make a valid image unreadable, and none of them changes the pixels the model sees.
PNG_KEPT_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"acTL", b"fcTL", b"fdAT"}


def png_without_ancillary(body: bytes) -> bytes:
    """The PNG with only `PNG_KEPT_CHUNKS`, walked by chunk lengths (nothing is decompressed)."""
    kept, i, n = [PNG_MAGIC], len(PNG_MAGIC), len(body)
    while i + 12 <= n:
        length = int.from_bytes(body[i : i + 4], "big")
        kind = body[i + 4 : i + 8]
        end = i + 12 + length
        if end > n:
            raise BadImage(f"PNG chunk {kind!r} runs past the end of the file (truncated)")
        if kind in PNG_KEPT_CHUNKS:
            kept.append(body[i:end])
        i = end
        if kind == b"IEND":
            break
    return b"".join(kept)


def decode_png(body: bytes) -> torch.Tensor:
    """PNG -> (3,H,W) uint8 with Pillow, which reports corrupt data as an exception (libpng under
    torchvision crashed the process on a bad row filter byte); 16-bit samples keep their top byte."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    gray = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
                    array = np.repeat(gray[..., None], 3, axis=-1)
                else:
                    array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"image cannot be decoded (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from exc
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()


def decode_upload(body: bytes, max_pixels: int = 4096 * 4096) -> torch.Tensor:
    """PNG/JPEG bytes -> (3,H,W) uint8 RGB, after checking the header's size: too many pixels is
    ImageTooLarge, an extreme aspect ratio or a JPEG of too many scans BadShape, GIF/WebP/animated PNG
    UnsupportedImage, anything undecodable BadImage. Grayscale, palette, RGBA and 16-bit PNGs
    become 8-bit RGB; EXIF orientation is applied to JPEGs."""
    kind = sniff(body)
    if kind is None:
        other = next((name for magic, name in OTHER_FORMATS.items() if body.startswith(magic)), None)
        if other:
            raise UnsupportedImage(f"{other} images are not accepted; send PNG or JPEG")
        raise BadImage("body is not a PNG or JPEG image (magic bytes do not match)")
    if kind == "image/png":
        body = png_without_ancillary(body)
    width, height, frames = header_size(body)
    if frames > 1:
        raise UnsupportedImage(f"animated PNG of {frames} frames: send one frame as a still PNG")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} px > limit {max_pixels} px (read from the header, not decoded)")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadShape(f"{width}x{height} px: aspect ratio beyond {MAX_ASPECT_RATIO}:1; crop or tile the image")
    if kind == "image/jpeg" and jpeg_scan_count(body) > MAX_JPEG_SCANS:
        raise BadShape(f"JPEG of more than {MAX_JPEG_SCANS} scans: re-encode it as baseline or standard progressive")
    if kind == "image/png":
        return decode_png(body)
    try:
        image = decode_image(
            torch.frombuffer(bytearray(body), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=kind == "image/jpeg",
        )
    except RuntimeError as exc:
        raise BadImage(f"image cannot be decoded (truncated or corrupt): {str(exc).splitlines()[0][:160]}") from exc
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def mask_png(mask: torch.Tensor) -> bytes:
    """(H,W) class ids -> single-channel PNG of class indices."""
    return encode_png(mask.to(torch.uint8)[None].contiguous()).numpy().tobytes()


LEGEND_ROW = 14  # px per legend row under an overlay


def overlay_png(
    image: torch.Tensor, mask: torch.Tensor, palette: list, classes: list[str], alpha: float = 0.5
) -> bytes:
    """The image blended with its class colours, above a legend of the classes present (the image
    keeps its size and position: the legend is a strip added below it)."""
    table = np.zeros((256, 3), np.float32)
    table[: len(palette)] = np.asarray(palette, np.float32)
    colours = torch.from_numpy(table[mask.numpy().astype(np.uint8)]).permute(2, 0, 1)
    blend = ((1 - alpha) * image.float() + alpha * colours).round().clamp(0, 255).to(torch.uint8)
    picture = Image.fromarray(blend.permute(1, 2, 0).numpy())
    present = [int(c) for c in torch.unique(mask) if int(c) < len(classes)]
    font = ImageFont.load_default()
    spots, x, row = [], 2, 0
    for c in present:  # lay the entries out left to right, wrapping at the image's width
        width = LEGEND_ROW + int(font.getlength(classes[c])) + 6
        if x + width > picture.width and x > 2:
            x, row = 2, row + 1
        spots.append((x, row, c))
        x += width
    canvas = Image.new("RGB", (picture.width, picture.height + (row + 1) * LEGEND_ROW + 2), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, row, c in spots:
        y = picture.height + 2 + row * LEGEND_ROW
        draw.rectangle((x, y + 1, x + 9, y + 10), fill=tuple(int(v) for v in palette[c]), outline="black")
        draw.text((x + 12, y), classes[c], fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return buf.getvalue()


def class_shares(mask: torch.Tensor, classes: list[str]) -> dict[str, float]:
    counts = torch.bincount(mask.flatten(), minlength=len(classes)).double()
    return {name: float(c / counts.sum()) for name, c in zip(classes, counts[: len(classes)])}
