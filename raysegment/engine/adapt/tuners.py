"""The adaptation methods as `FineTuner`s, so the one-process loop and Ray Train drive them alike.

- `AdaBNTuner`: one pass re-estimating BatchNorm statistics on unlabelled target images.
- `TentTuner`: AdaBN, then entropy minimisation of the BatchNorm affine parameters (Wang et al. 2021).
- `SelfTrainer`: mean-teacher self-training: supervised source batches plus target images with
  confidence-weighted teacher pseudo-labels, ClassMix-ed with source classes, strongly augmented
  for the student; optional FDA and rare-class sampling.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from functools import partial

from raysegment.augment import class_mix, fourier_domain_adaptation, photometric_augment, to_float
from raysegment.config import RunConfig
from raysegment.data import EpochSampler, RareClassSampler, SegmentationDataset, pad_collate
from raysegment.data.dataset import read_mask
from raysegment.engine.adapt.batchnorm import adapt_batchnorm
from raysegment.engine.adapt.teacher import EMATeacher
from raysegment.engine.finetuner import FineTuner
from raysegment.engine.loss import segmentation_loss
from raysegment.models import Segmenter
from raysegment.models.freeze import is_batchnorm

Wrap = Callable[[torch.nn.Module], torch.nn.Module] | None


class AdaBNTuner(FineTuner):
    """Label-free, gradient-free: a single 'epoch' that re-estimates BN statistics."""

    @property
    def total_epochs(self) -> int:
        return 1

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        layers = adapt_batchnorm(self.model, self.loader.dataset, self.cfg.optim.batch_size, self.device)
        self.epoch += 1
        stats = {"epoch": self.epoch, "loss": 0.0, "lr": 0.0, "seconds": 0.0, "images_per_s": 0.0,
                 "bn_layers": layers}
        self.history.append(stats)
        return stats


def tent_parameters(model: Segmenter) -> list[torch.nn.Parameter]:
    """Leave only BatchNorm affine parameters trainable (Tent's choice: few, well-conditioned)."""
    model.requires_grad_(False)
    params = []
    for module in model.modules():
        if is_batchnorm(module) and module.affine:
            module.weight.requires_grad_(True)
            module.bias.requires_grad_(True)
            params += [module.weight, module.bias]
    return params


class TentTuner(FineTuner):
    """Entropy minimisation on unlabelled target batches; BN normalises with batch statistics."""

    def __init__(self, cfg: RunConfig, target_set: Dataset, device, rank: int = 0, world_size: int = 1,
                 wrap_model: Wrap = None, model: Segmenter | None = None) -> None:
        reference = copy.deepcopy(model)
        model.to(device)
        adapt_batchnorm(model, target_set, cfg.optim.batch_size, device)  # start from target statistics
        tent_parameters(model)  # before any DDP wrap: DDP fixes the trainable set when it wraps
        super().__init__(cfg, target_set, device, rank, world_size, wrap_model, model, reference=reference)

    def compute_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        probs = self.forward(to_float(images.to(self.device, non_blocking=True))).float().softmax(1)
        return -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()


class SelfTrainer(FineTuner):
    """Mean-teacher self-training; checkpoints deploy the teacher and carry the student."""

    def __init__(self, cfg: RunConfig, source_set: SegmentationDataset, target_set: Dataset, device,
                 rank: int = 0, world_size: int = 1, wrap_model: Wrap = None, model: Segmenter | None = None) -> None:
        a = cfg.adapt
        sampler = None
        if a.rare_class_temperature is not None:
            classes = [set(read_mask(m).unique().tolist()) - {source_set.info.ignore_index} for _, m in source_set.pairs]
            sampler = RareClassSampler(classes, a.rare_class_temperature, cfg.optim.seed, rank, world_size)
        super().__init__(cfg, source_set, device, rank, world_size, wrap_model, model, sampler=sampler)
        self.target_sampler = EpochSampler(len(target_set), cfg.optim.seed + 1, rank, world_size)
        self.target_loader = DataLoader(target_set, batch_size=cfg.optim.batch_size, sampler=self.target_sampler,
                                        num_workers=cfg.data.num_workers,
                                        collate_fn=partial(pad_collate, ignore_index=self.info.ignore_index))
        self.target_set = target_set
        self.teacher = EMATeacher(self.model, a.ema_alpha)
        self.refresh_teacher_statistics()
        self.strong = photometric_augment(a.strong_jitter).to(self.device)
        self.mix_generator = torch.Generator()

    @property
    def deployable(self) -> torch.nn.Module:
        return self.teacher.model

    def refresh_teacher_statistics(self) -> None:
        """AdaBN on the teacher: its pseudo-labels use target statistics (every rank sees all images)."""
        adapt_batchnorm(self.teacher.model, self.target_set, self.cfg.optim.batch_size, self.device)

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        stats = super().train_epoch(progress)
        self.refresh_teacher_statistics()
        return stats

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self.sampler.set_epoch(self.epoch)
        self.target_sampler.set_epoch(self.epoch)
        # ClassMix draws depend on (seed, epoch, rank) only, so a resumed run mixes the same way.
        self.mix_generator.manual_seed((self.cfg.optim.seed * 1_000_003 + self.epoch) * 64 + self.rank)
        target = itertools.cycle(self.target_loader) if len(self.target_loader) else iter(())
        for (xs, ys), (xt, _) in zip(self.loader, target):
            yield xs, ys, xt

    def compute_loss(self, source: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a, ignore = self.cfg.adapt, self.info.ignore_index
        xs, ys = self.augment(source.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True))
        xt = to_float(target.to(self.device, non_blocking=True))
        if xt.shape[-2:] != xs.shape[-2:]:
            xt = F.interpolate(xt, size=xs.shape[-2:], mode="bilinear", align_corners=False)
        xt = xt[: xs.shape[0]]
        xs_styled = fourier_domain_adaptation(xs, xt, a.fda_beta)
        pseudo, weights = self.teacher.pseudo_labels(xt, a.pseudo_threshold)
        if a.classmix:
            mixed, mixed_labels, mixed_weights = class_mix(xs_styled, ys, xt, pseudo, weights, ignore,
                                                           self.mix_generator)
        else:
            mixed, mixed_labels, mixed_weights = xt, pseudo, weights
        mixed = self.strong(mixed).clamp(0, 1)
        logits = self.forward(torch.cat([xs_styled, mixed]))  # one forward: DDP expects one per backward
        source_logits, mixed_logits = logits.split([xs.shape[0], mixed.shape[0]])
        loss_source = segmentation_loss(source_logits, ys, ignore, self.class_weights)
        ce = F.cross_entropy(mixed_logits.float(), mixed_labels, ignore_index=ignore, reduction="none")
        valid = (mixed_labels != ignore).float()
        loss_target = (ce * mixed_weights * valid).sum() / valid.sum().clamp(min=1)
        return loss_source + loss_target

    def after_step(self) -> None:
        self.teacher.update(self.model, self.step - 1)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"student/{k}": v for k, v in self.model.state_dict().items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k.removeprefix("student/"): v for k, v in tensors.items()
                                    if k.startswith("student/")})
