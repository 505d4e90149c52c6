"""ONNX Runtime as a drop-in model: `OrtSegmenter(graph bytes, ...)` is an `nn.Module` whose forward
takes the segmenter's input ((B,3,H,W) float in [0,1], any size) and returns its logits, so every
evaluation, proxy and serving path runs it unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from raysegment.export.graph import INPUT, to_numpy
from raysegment.models.segmenter import Segmenter

CPU_PROVIDERS = ("CPUExecutionProvider",)


def pad_to_stride(images: torch.Tensor, stride: int, mean: torch.Tensor) -> torch.Tensor:
    """Pad bottom/right to a multiple of `stride` with the normalisation mean (which the graph
    normalises to zero, exactly as `Segmenter.forward` pads its normalised input with zeros)."""
    b, c, h, w = images.shape
    ph, pw = h + (-h) % stride, w + (-w) % stride
    if (ph, pw) == (h, w):
        return images
    padded = mean.to(images.dtype).view(1, c, 1, 1).expand(b, c, ph, pw).clone()
    padded[..., :h, :w] = images
    return padded


def session(graph: bytes, threads: int = 1, providers: Sequence[str] = CPU_PROVIDERS):  # -> ort.InferenceSession
    """An ONNX Runtime session sized to `threads` CPU threads (a replica's CPUs), one per model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or list(CPU_PROVIDERS)
    return ort.InferenceSession(graph, sess_options=options, providers=chosen)


class OrtSegmenter(nn.Module):
    """An exported segmenter run by ONNX Runtime. No parameters: `.train()`/`.to()` change nothing,
    and it never learns (online AdaBN and Tent need the torch model)."""

    def __init__(
        self,
        graph: bytes,
        stride: int,
        mean: Sequence[float],
        num_classes: int,
        threads: int = 1,
        providers: Sequence[str] = CPU_PROVIDERS,
    ) -> None:
        super().__init__()
        self.session = session(graph, threads, providers)
        self.stride, self.num_classes = stride, num_classes
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.graph_bytes = len(graph)

    mean: torch.Tensor

    @classmethod
    def like(
        cls, model: Segmenter, graph: bytes, threads: int = 1, providers: Sequence[str] = CPU_PROVIDERS
    ) -> OrtSegmenter:
        """The runtime for `graph`, exported from `model` (its stride, mean and classes)."""
        mean = [float(v) for v in model.mean.flatten()]
        return cls(graph, model.stride, mean, model.num_classes, threads, providers)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        padded = pad_to_stride(images.float().cpu(), self.stride, self.mean)
        (logits,) = self.session.run(None, {INPUT: to_numpy(padded)})
        return torch.from_numpy(np.asarray(logits))[..., :h, :w].to(images.device)
