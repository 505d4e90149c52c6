"""Continual adaptation while serving, without collapse: online AdaBN or Tent on a stream of
unlabelled batches, watched by a guard (CoTTA's restore, with the proxy as the trigger).

Online test-time adaptation drifts: Tent keeps lowering entropy until it predicts one class, and
statistics follow whatever the stream shows last. The guard keeps the production snapshot the
adaptation started from and scores every image with both, by the paired consistency proxy (both
over the classes either predicts); when the adapted model is behind over a sliding window of the
last `window` images, or has let a class the snapshot predicts shrink below `min_class_ratio` of
the snapshot's share there (Tent's collapse, which makes predictions more stable, not less: seen
on the DRIVE -> CHASE stream, where the vessel share fell 38% over 6 rounds while the consistency
proxy rose), the model is reset to the snapshot.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

from raysegment.engine.adapt.methods import mean_entropy, tent_parameters
from raysegment.engine.proxies import paired_consistency_and_predictions
from raysegment.models.freeze import is_batchnorm

OnlineMethod = Literal["none", "adabn", "tent"]


@torch.no_grad()
def update_batchnorm_statistics(model: torch.nn.Module, batch: torch.Tensor, momentum: float) -> None:
    """One online AdaBN step: move running statistics towards this batch's, weights untouched."""
    layers = [m for m in model.modules() if is_batchnorm(m)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = momentum
        m.train()
    model(batch)
    for m, old in zip(layers, saved):
        m.momentum = old
    model.eval()


def batchnorm_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` that shares every tensor outside its BatchNorm layers: the only ones online
    AdaBN and Tent change. A domain's guard snapshot then costs its BatchNorm layers, not a model."""
    shared = {
        id(t): t
        for module in model.modules()
        if not is_batchnorm(module)
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    }
    return copy.deepcopy(model, memo=shared)


class OnlineAdapter:
    """Adapts `model` in place to each batch before predicting it; `guard` restores the snapshot
    whenever the adapted model is behind it over a sliding window of the last `window` images."""

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        method: OnlineMethod,
        guard: bool,
        window: int = 16,
        momentum: float = 0.1,
        lr: float = 1e-3,
        min_class_ratio: float = 0.9,
    ) -> None:
        self.model = model.eval()
        self.num_classes = num_classes
        self.method = method
        self.guard = guard
        self.window = window
        self.momentum = momentum
        self.snapshot = batchnorm_twin(model).eval()
        self.recent: list[float] = []  # adapted minus snapshot proxy, per recent image
        self.class_pixels: list[torch.Tensor] = []  # (2, C) predicted pixels per class, adapted and snapshot
        self.min_class_ratio = min_class_ratio
        self.restores = 0
        self.lr = lr
        self.optimizer = self._optimizer()

    def shrunk_class(self) -> int | None:
        """A class the snapshot predicts on >= 1% of the window's pixels that the adapted model
        predicts on less than `min_class_ratio` of that: how entropy minimisation collapses (a
        thin class dropped makes predictions *more* stable, so the consistency proxy cannot see it)."""
        counts = torch.stack(self.class_pixels).sum(0).double()  # (2, C): adapted, snapshot
        shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
        lost = (shares[1] >= 0.01) & (shares[0] < self.min_class_ratio * shares[1])
        return int(lost.nonzero()[0]) if lost.any() else None

    def _optimizer(self) -> torch.optim.Optimizer | None:
        if self.method != "tent":
            return None
        return torch.optim.Adam(tent_parameters(self.model), lr=self.lr)  # type: ignore[arg-type]

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """Adapt to `batch` (B, 3, H, W float), then return the adapted model's logits for it."""
        self.adapt(batch)
        with torch.no_grad():
            logits = self.model(batch)
        self.watch(batch)
        return logits

    def adapt(self, batch: torch.Tensor) -> None:
        """One adaptation step on `batch` (nothing for method `none`)."""
        if self.method == "adabn":
            update_batchnorm_statistics(self.model, batch, self.momentum)
        elif self.method == "tent":
            assert self.optimizer is not None
            layers = [m for m in self.model.modules() if is_batchnorm(m)]
            for m in layers:
                m.momentum, m.training = self.momentum, True  # normalise with (and track) this batch's statistics
            loss = mean_entropy(self.model(batch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.model.eval()

    @torch.no_grad()
    def watch(self, batch: torch.Tensor) -> None:
        """Let the guard score `batch` (the adapted model against the snapshot, image by image) and
        restore the snapshot when, over the last `window` images, the adapted model is behind by
        the paired proxy or has let a class shrink below `min_class_ratio` of the snapshot's share."""
        if not self.guard or self.method == "none":
            return
        for image in batch:
            (adapted, kept), (ours, theirs) = paired_consistency_and_predictions(
                [self.model, self.snapshot], image[None], self.num_classes
            )
            self.recent.append(adapted - kept)
            self.class_pixels.append(
                torch.stack([torch.bincount(p.flatten().cpu(), minlength=self.num_classes) for p in (ours, theirs)])
            )
        self.recent, self.class_pixels = self.recent[-self.window :], self.class_pixels[-self.window :]
        if len(self.recent) < self.window:
            return
        if sum(self.recent) < 0 or self.shrunk_class() is not None:
            self.recent, self.class_pixels = [], []
            current = self.model.state_dict()
            for key, value in self.snapshot.state_dict().items():
                if not torch.equal(current[key], value):  # only what moved: shared tensors are never written
                    current[key].copy_(value)
            self.optimizer = self._optimizer()  # no momentum carried over from the collapsed run
            self.restores += 1
