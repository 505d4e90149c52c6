"""Mean teacher (Tarvainen & Valpola 2017): an exponential moving average of the student.

The teacher labels target images; being an average over many student steps, it is steadier
than the student and its pseudo-labels drift less. Only parameters are averaged: the teacher's
BatchNorm statistics are its own, re-estimated on target images (AdaBN), because the student's
running statistics mix source and target batches. Under DDP every rank holds the same student
after each step, so every rank's teacher follows the same formula to the same weights.
"""

from __future__ import annotations

import copy

import torch


class EMATeacher:
    def __init__(self, student: torch.nn.Module, alpha: float) -> None:
        self.model = copy.deepcopy(student).eval().requires_grad_(False)
        self.alpha = alpha

    def decay_at(self, step: int) -> float:
        """alpha_t = min(1 - 1/(t+1), alpha): the teacher follows the student closely at first."""
        return min(1.0 - 1.0 / (step + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: torch.nn.Module, step: int) -> None:
        """teacher = a*teacher + (1-a)*student, parameter by parameter."""
        a = self.decay_at(step)
        for t, s in zip(self.model.parameters(), student.parameters(), strict=True):
            t.mul_(a).add_(s.detach(), alpha=1.0 - a)

    @torch.no_grad()
    def pseudo_labels(
        self, images: torch.Tensor, threshold: float, class_portion: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) float -> (labels (B,H,W) int64, weights (B,H,W) float).

        Without `class_portion`, the weight of an image's pseudo-labels is the share of its pixels
        predicted with confidence above `threshold` (DAFormer): a confused teacher teaches softly.
        With it (class-balanced self-training, Zou et al. 2018), a pixel weighs 1 when its confidence
        is above `threshold` or in the top `class_portion` of the pixels predicted as its class in
        this batch, else 0: a rare class the teacher is never sure of (thin vessels) still teaches.
        """
        self.model.eval()
        confidence, labels = self.model(images).float().softmax(1).max(1)
        if class_portion is None:
            share = (confidence > threshold).float().mean(dim=(1, 2), keepdim=True)
            return labels, share.expand_as(confidence).contiguous()
        return labels, class_balanced_weights(confidence, labels, threshold, class_portion)


def class_balanced_weights(
    confidence: torch.Tensor, labels: torch.Tensor, threshold: float, portion: float
) -> torch.Tensor:
    """(B,H,W) 0/1 weights: per predicted class, the pixels above min(threshold, that class's
    (1 - portion) confidence quantile)."""
    weights = torch.zeros_like(confidence)
    for c in labels.unique().tolist():
        of_class = labels == c
        values = confidence[of_class]
        if values.numel() > 1_000_000:  # torch.quantile's input limit; a strided sample keeps it exact enough
            values = values[:: values.numel() // 1_000_000 + 1]
        cut = min(threshold, float(torch.quantile(values, 1 - portion)))
        weights[of_class & (confidence >= cut)] = 1.0
    return weights
