"""INT8 static quantization (ONNX Runtime, QDQ format), calibrated on a domain's own unlabelled
images: activation ranges come from what the model sees on that domain, weights per channel."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from raysegment.export.graph import INPUT, ExportError, to_numpy
from raysegment.export.runtime import pad_to_stride


def quantize_int8(
    graph: bytes, calibration: Sequence[torch.Tensor], stride: int, mean: torch.Tensor, method: str = "minmax"
) -> bytes:
    """The float graph quantized to INT8 (QDQ: S8 weights per channel, U8 activations), its
    activation ranges measured on `calibration` ((3,H,W) float images in [0,1], any sizes)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ExportError("INT8 calibration needs at least one image of the domain")
    feeds = [{INPUT: to_numpy(pad_to_stride(img[None].float(), stride, mean.flatten()))} for img in calibration]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self):  # type: ignore[override]
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        # Symbolic shape inference takes ~40 s on these graphs and is not needed for QDQ on CPU.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Feeds(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=methods[method],
        )
        return out.read_bytes()
