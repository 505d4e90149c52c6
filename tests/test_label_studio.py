"""The Label Studio round trip's own pieces: brush RLE both ways and masks <-> brush results. The
round trip itself runs against a real Label Studio server in `test_readme.py`, as the README's
few-labels block: push, a person's annotations through the API, pull, pixel for pixel."""

from __future__ import annotations

import numpy as np

from raysegment.apps.label_studio import mask_results, results_mask
from raysegment.data.brush import decode, encode
from raysegment.data.info import DatasetInfo

INFO = DatasetInfo(classes=["background", "vessel"], palette=[(0, 0, 0), (255, 255, 255)])


def test_brush_rle_round_trips_and_reads_literal_runs():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (45, 61), (131, 97)]:
        mask = rng.random((h, w)) > 0.6
        assert (decode(encode(mask), h, w) == mask).all()
    # A literal run (flag 0), as other encoders write them: 1 pixel = 4 words [255, 255, 255, 255].
    bits = format(4, "032b") + format(7, "05b") + "".join(format(b - 1, "04b") for b in (3, 4, 8, 16))
    bits += "0" + "00" + format(3, "03b") + format(255, "08b") * 4
    bits += "0" * (-len(bits) % 8)
    assert decode([int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)], 1, 1).tolist() == [[True]]
    mask = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)  # 255: not painted
    assert (results_mask(mask_results(mask, INFO), INFO, 2, 3) == mask).all()
