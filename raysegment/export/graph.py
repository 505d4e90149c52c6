"""Torch -> ONNX, and the check every export must pass before anyone may store or serve it.

The graph is the segmenter for inputs whose height and width are multiples of the backbone's
stride, with dynamic batch, height and width.
Padding to the stride happens outside the graph, identically to `Segmenter.forward`: there the
normalised image is padded with zeros, here the raw image is padded with the normalisation mean,
which normalises to the same zeros (`runtime.pad_to_stride`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raysegment.errors import RaySegmentError
from raysegment.models.outputs import class_map
from raysegment.models.segmenter import Segmenter

DEFAULT_OPSET = 17
MIN_AGREEMENT = 0.999  # an export whose argmax differs from torch on more pixels is refused
INPUT, OUTPUT = "images", "logits"


class ExportError(RaySegmentError):
    """A model could not be exported, or its export does not compute what the model computes."""


class _StrideAligned(nn.Module):
    """The segmenter for inputs already padded to its stride: what the graph holds."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        logits = m.head(m.decoder(m.encoder((images - m.mean) / m.std)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def export_onnx(model: Segmenter, opset: int = DEFAULT_OPSET) -> bytes:
    """The model as ONNX bytes (float32 in [0,1] -> float32 logits), checked by `onnx.checker`.

    Torch's TorchScript exporter (tracing, dynamic axes): 1-4 s for these CNNs on 2 cores, where
    the `torch.export`-based one took ~18 s for the same graph and the same numbers. Nothing in the
    traced graph branches on the input (the padding is outside it), so tracing loses nothing."""
    import onnx

    core = _StrideAligned(model).eval().float()
    example = torch.rand(2, 3, 2 * model.stride, 3 * model.stride)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation, tracer notes
            torch.onnx.export(
                core,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object is accepted
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={
                    INPUT: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT: {0: "batch", 2: "height", 3: "width"},
                },
            )
    except Exception as exc:  # the exporter raises many types; the user needs the first line
        raise ExportError(f"torch.onnx.export failed for this model: {type(exc).__name__}: {str(exc)[:300]}") from exc
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph, full_check=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Agreement:
    """How an exported graph's logits compare with the torch model's on the same images."""

    max_abs_diff: float
    pixel_agreement: float  # share of pixels whose argmax class is the same
    images: int
    sizes: tuple[tuple[int, int], ...]

    @property
    def passed(self) -> bool:
        return self.pixel_agreement >= MIN_AGREEMENT

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        return (
            f"argmax agreement {100 * self.pixel_agreement:.3f}% of pixels, max |logit difference| "
            f"{self.max_abs_diff:.2e} on {self.images} images at {sizes}"
        )


@torch.no_grad()
def agreement(reference: nn.Module, exported: nn.Module, images: list[torch.Tensor]) -> Agreement:
    """Compare `exported` (e.g. a `runtime.OrtSegmenter`) with `reference` on (3,H,W) float images,
    one forward per image (any size: both pad to the stride themselves)."""
    worst, same, total, sizes = 0.0, 0, 0, []
    for image in images:
        batch = image[None].float()
        ref, out = reference(batch).float(), exported(batch).float()
        worst = max(worst, float((ref - out).abs().max()))
        same += int((class_map(ref) == class_map(out)).sum())
        total += ref.shape[-1] * ref.shape[-2]
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if size not in sizes:
            sizes.append(size)
    return Agreement(worst, same / max(total, 1), len(images), tuple(sizes))


def check_images(images: list[torch.Tensor], sizes: tuple[tuple[int, int], ...]) -> list[torch.Tensor]:
    """Each image at each of `sizes` (bilinear), so an export is checked at two sizes at least."""
    out = []
    for image in images:
        for size in sizes:
            out.append(F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0])
    return out


def odd_sizes(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The working size and a smaller one not divisible by any stride (both paths of the padding)."""
    return (height, width), (max(height // 2 + 3, 17), max(width // 2 + 5, 19))


def to_numpy(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.detach().cpu().float().numpy())
