"""An upload, checked before it costs anything: the content type and declared length from the
headers, the body capped while it streams and given a deadline, then the image header (size,
frames, shape) before its pixels are decoded off the event loop (`serving.imaging`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch
from fastapi import Request

from raysegment.serving import imaging
from raysegment.serving.config import Limits
from raysegment.serving.errors import (
    BadContentLength,
    EmptyBody,
    NotAnImage,
    TooLarge,
    TooSlow,
    UnsupportedContentType,
    UnsupportedFormat,
    UnsupportedShape,
)

ACCEPTED_TYPES = ("image/png", "image/jpeg", "application/octet-stream", "")


@dataclass(frozen=True)
class Upload:
    body: bytes  # as sent: what capture stores
    image: torch.Tensor  # (3,H,W) uint8 RGB


def check_headers(request: Request, limits: Limits) -> None:
    """Refuse from the headers alone: a wrong content type, a malformed or too large length."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in ACCEPTED_TYPES:
        raise UnsupportedContentType(f"{ctype[:60]!r}; send image/png or image/jpeg")
    length = request.headers.get("content-length", "")
    if length and (not length.isascii() or not length.isdigit()):
        raise BadContentLength(f"{length[:40]!r}")
    if length and int(length) > limits.max_image_bytes:
        raise TooLarge(f"{length} bytes > limit {limits.max_image_bytes}")


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (chunked uploads included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body passed {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(body: bytes, max_pixels: int) -> torch.Tensor:
    """`imaging.decode_upload` with its errors as the upload's refusals."""
    try:
        return imaging.decode_upload(body, max_pixels)
    except imaging.ImageTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    except imaging.BadShape as exc:
        raise UnsupportedShape(str(exc)) from exc
    except imaging.UnsupportedImage as exc:
        raise UnsupportedFormat(str(exc)) from exc
    except imaging.BadImage as exc:
        raise NotAnImage(str(exc)) from exc


async def read_upload(request: Request, limits: Limits) -> Upload:
    """The request's image, or an `UploadRefused` naming why."""
    check_headers(request, limits)
    try:
        body = await asyncio.wait_for(read_capped(request, limits.max_image_bytes), limits.body_timeout_s)
    except TimeoutError as exc:
        raise TooSlow(f"not received within {limits.body_timeout_s:g} s") from exc
    if not body:
        raise EmptyBody("POST the PNG or JPEG bytes as the request body")
    return Upload(body, await asyncio.to_thread(decode, body, limits.max_pixels))
