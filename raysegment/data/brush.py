"""Label Studio's brush masks: the run-length packing its `BrushLabels` results carry (`format: rle`).

The format is thi.ng's rle-pack over the mask as an RGBA image, row-major, 4 bytes a pixel (painted
pixels 255 in every channel): a header (value count: 32 bits, word size - 1: 5 bits, four run-length
bit widths - 1: 4 bits each), then runs, each a flag bit (1: one word repeated, 0: literal words),
2 bits choosing the run-length width, the run length - 1 in that width, and the word(s). Label
Studio's editor decodes any valid packing; `encode` writes repeat runs only (a mask is long runs).
"""

from __future__ import annotations

import numpy as np

from raysegment.errors import DatasetError

WORD = 8
RUN_BITS = (3, 4, 8, 16)  # run-length widths: runs of up to 8, 16, 256 and 65536 words


class _Bits:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, value: int, width: int) -> None:
        self.parts.append(format(value, f"0{width}b"))

    def to_list(self) -> list[int]:
        bits = "".join(self.parts)
        bits += "0" * (-len(bits) % 8)
        return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def encode(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> the `rle` list of a Label Studio brush result (painted where True)."""
    words = np.repeat((mask.astype(bool) * 255).astype(np.uint8).reshape(-1, 1), 4, axis=1).reshape(-1)
    out = _Bits()
    out.write(words.size, 32)
    out.write(WORD - 1, 5)
    for bits in RUN_BITS:
        out.write(bits - 1, 4)
    edges = np.flatnonzero(np.diff(words)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [words.size]])
    longest = 1 << RUN_BITS[-1]
    for start, end in zip(starts.tolist(), ends.tolist()):
        value = int(words[start])
        while start < end:
            run = min(end - start, longest)
            size = next(i for i, bits in enumerate(RUN_BITS) if run - 1 < (1 << bits))
            out.write(1, 1)
            out.write(size, 2)
            out.write(run - 1, RUN_BITS[size])
            out.write(value, WORD)
            start += run
    return out.to_list()


def decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """A brush result's `rle` -> (H, W) bool, painted pixels True (read from the alpha channel)."""
    bits = "".join(format(b, "08b") for b in rle)
    position = 0

    def read(width_: int) -> int:
        nonlocal position
        if position + width_ > len(bits):
            raise DatasetError("a brush mask's RLE ends early: the annotation is corrupt")
        value = int(bits[position : position + width_], 2)
        position += width_
        return value

    count = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if count != height * width * 4:
        raise DatasetError(f"a brush mask holds {count} values, not {height}x{width}x4: it is for another image")
    out: np.ndarray = np.zeros(count, np.uint32)
    i = 0
    while i < count:
        repeat = read(1)
        j = min(count, i + 1 + read(sizes[read(2)]))
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    alpha: np.ndarray = out.reshape(height, width, 4)[..., 3]
    return alpha > 0
