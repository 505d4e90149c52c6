"""The label-free adaptation methods, as `Method`s, so one `Runner` and the one epoch loop drive
them like fine-tuning, in one process and on every Ray Train rank alike.

- `AdaBN`: re-estimate BatchNorm statistics on the target images (Li et al. 2016): one epoch that
  trains nothing (`adapt_batchnorm` is the work; the optimiser is empty).
- `Tent`: AdaBN, then entropy minimisation of the BatchNorm affine parameters (Wang et al. 2021).
- `SelfTraining`: mean-teacher self-training: supervised source batches plus target images with
  confidence-weighted teacher pseudo-labels, ClassMix-ed with source classes, strongly augmented
  for the student; optional FDA, rare-class sampling, class-balanced pseudo-label thresholds
  (`pseudo_class_portion`) and MIC masked-image consistency (`mask_ratio`). Source and target batches are paired item
  by item whatever their sizes (short last batches, a target smaller than one batch, other image
  sizes): the target batch is repeated or cut to the source batch and resized to its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from raysegment.augment import class_mix, fourier_domain_adaptation, match_batch, photometric_augment
from raysegment.config import RunConfig
from raysegment.data import EpochSampler, RareClassSampler, SegmentationDataset
from raysegment.data.dataset import Batch, read_mask
from raysegment.engine.adapt.batchnorm import adapt_batchnorm
from raysegment.engine.adapt.teacher import EMATeacher
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.method import Compute, Method, Paired, Placement, endless
from raysegment.errors import ConfigError
from raysegment.models.freeze import is_batchnorm
from raysegment.models.segmenter import Segmenter


def require_batchnorm(model: Segmenter, method: str) -> None:
    """Refuse a BatchNorm method on a model without BatchNorm (e.g. SMP's Segformer, all LayerNorm):
    it would change nothing and still be reported as adapted."""
    if not any(is_batchnorm(m) and m.running_mean is not None for m in model.modules()):
        raise ConfigError(
            f"adapt.method={method} adapts BatchNorm statistics and this model has no BatchNorm layer "
            "(LayerNorm/GroupNorm models): use self_training or finetune"
        )


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


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel prediction entropy: what Tent minimises."""
    probs = logits.float().softmax(1)
    return -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()


class AdaBN(Method):
    """The source model with its BatchNorm statistics re-estimated on the target's train images:
    seconds of work and no gradient, so one epoch of no steps whose end is the re-estimation."""

    name = "adabn"

    def __init__(
        self, cfg: RunConfig, *, model: Segmenter, train_set: SegmentationDataset, placement: Placement
    ) -> None:
        require_batchnorm(model, self.name)
        super().__init__(cfg, model=model.requires_grad_(False), train_set=train_set, placement=placement)
        self.target_set = train_set

    @property
    def epochs(self) -> int:
        return 1

    @property
    def steps_per_epoch(self) -> int:
        return 0

    def batches(self, epoch: int) -> Iterable[Batch]:
        return ()

    def after_epoch(self, epoch: int) -> None:
        c = self.cfg
        adapt_batchnorm(self.model, self.target_set, c.optim.batch_size, self.device, c.data.resize, c.adapt.bn_mix)


class Tent(Method):
    """Entropy minimisation on unlabelled target batches after AdaBN; BN normalises with batch
    statistics and only its affine parameters train."""

    name = "tent"

    def __init__(
        self, cfg: RunConfig, *, model: Segmenter, train_set: SegmentationDataset, placement: Placement
    ) -> None:
        require_batchnorm(model, self.name)
        super().__init__(cfg, model=model, train_set=train_set, placement=placement)  # the reference: the source
        c = cfg
        adapt_batchnorm(self.model, train_set, c.optim.batch_size, self.device, c.data.resize, c.adapt.bn_mix)
        tent_parameters(self.model)  # before the runner's DDP wrap: DDP fixes the trainable set when it wraps

    def loss(self, batch: Batch, compute: Compute) -> torch.Tensor:
        images, _ = compute.to_device(batch)
        return mean_entropy(compute.forward(images))


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Pixel cross-entropy weighted by pseudo-label confidence, averaged over the labelled pixels."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).float()
    return (ce * weights * valid).sum() / valid.sum().clamp(min=1)


def masked_patches(images: torch.Tensor, ratio: float, block: int, generator: torch.Generator) -> torch.Tensor:
    """images (B,3,H,W) with a random `ratio` of the `block` x `block` patches set to 0 (MIC,
    Hoyer et al. 2023); drawn from `generator` so a resumed run masks the same way."""
    b, _, h, w = images.shape
    grid = (math.ceil(h / block), math.ceil(w / block))
    keep = (torch.rand((b, 1, *grid), generator=generator) >= ratio).to(images.device, images.dtype)
    return images * F.interpolate(keep, scale_factor=block, mode="nearest")[..., :h, :w]


class SelfTraining(Method):
    """Mean-teacher self-training from the labelled source (`train_set`) to the unlabelled
    `target_set`; an epoch is a pass over the source, the target cycled. With `labelled_target`
    (k labelled target images) every step also trains on a batch of those, beside the source's:
    the few labels and the pseudo-labelled rest of the target together. Checkpoints deploy the
    teacher and carry the student."""

    name = "self_training"

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: Segmenter,
        train_set: SegmentationDataset,
        target_set: SegmentationDataset,
        placement: Placement,
        labelled_target: SegmentationDataset | None = None,
    ) -> None:
        a, p = cfg.adapt, placement
        sampler = None
        if a.rare_class_temperature is not None:
            ignore = train_set.info.ignore_index
            classes = [
                set(read_mask(mask).unique().tolist()) - {ignore} if mask else set() for _, mask in train_set.samples
            ]  # the source set is labelled: every mask is there
            sampler = RareClassSampler(classes, a.rare_class_temperature, cfg.optim.seed, p.rank, p.world_size)
        super().__init__(cfg, model=model, train_set=train_set, placement=placement, sampler=sampler)
        self.target_set = target_set
        self.target_sampler = EpochSampler(len(target_set), cfg.optim.seed + 1, p.rank, p.world_size)
        self.target_loader = p.loader_for(target_set, cfg, self.target_sampler)
        self.labelled_loader = None
        if labelled_target is not None:  # k target labels: supervised beside the source, cycled
            self.labelled_sampler = EpochSampler(len(labelled_target), cfg.optim.seed + 2, p.rank, p.world_size)
            self.labelled_loader = p.loader_for(labelled_target, cfg, self.labelled_sampler)
        self.teacher = EMATeacher(self.model, a.ema_alpha)
        self.refresh_teacher_statistics()
        self.strong = photometric_augment(a.strong_jitter).to(self.device)
        self.mix_generator = torch.Generator()

    @property
    def deployable(self) -> torch.nn.Module:
        return self.teacher.model

    def refresh_teacher_statistics(self) -> None:
        """AdaBN on the teacher: its pseudo-labels use target statistics (every rank sees all images)."""
        adapt_batchnorm(
            self.teacher.model, self.target_set, self.cfg.optim.batch_size, self.device, self.cfg.data.resize
        )

    def after_epoch(self, epoch: int) -> None:
        self.refresh_teacher_statistics()

    def batches(self, epoch: int) -> Iterator[Paired]:
        self.sampler.set_epoch(epoch)
        self.target_sampler.set_epoch(epoch)
        # ClassMix draws depend on (seed, epoch, rank) only, so a resumed run mixes the same way.
        self.mix_generator.manual_seed((self.cfg.optim.seed * 1_000_003 + epoch) * 64 + self.placement.rank)
        targets = endless(self.target_loader)
        if self.labelled_loader is None:
            return (Paired(source=source, target=next(targets)) for source in self.loader)
        self.labelled_sampler.set_epoch(epoch)
        labelled = endless(self.labelled_loader)
        return (Paired(source=source, target=next(targets), labelled=next(labelled)) for source in self.loader)

    def loss(self, batch: Paired, compute: Compute) -> torch.Tensor:
        a, ignore = self.cfg.adapt, self.info.ignore_index
        xs, ys = compute.augment(*compute.to_device(batch.source))
        xt, _ = compute.to_device(batch.target)
        xt, _ = match_batch(xt, None, xs.shape[0], tuple(xs.shape[-2:]))
        xs_styled = fourier_domain_adaptation(xs, xt, a.fda_beta)
        pseudo, weights = self.teacher.pseudo_labels(xt, a.pseudo_threshold, a.pseudo_class_portion)
        if a.classmix:
            mixed, mixed_labels, mixed_weights = class_mix(
                xs_styled, ys, xt, pseudo, weights, ignore, self.mix_generator
            )
        else:
            mixed, mixed_labels, mixed_weights = xt, pseudo, weights
        views = [xs_styled, self.strong(mixed).clamp(0, 1)]
        if batch.labelled is not None:  # the few target labels, at the source batch's size
            xl, yl = compute.augment(*compute.to_device(batch.labelled))
            xl, yl = match_batch(xl, yl, xl.shape[0], tuple(xs.shape[-2:]))
            views.append(xl)
        if a.mask_ratio > 0:  # MIC: the student must predict the teacher's labels from context alone
            views.append(masked_patches(self.strong(xt).clamp(0, 1), a.mask_ratio, a.mask_block, self.mix_generator))
        logits = compute.forward(torch.cat(views))  # one forward: DDP expects one per backward
        source_logits, mixed_logits, *rest = logits.split([v.shape[0] for v in views])
        loss = segmentation_loss(source_logits, ys, ignore, compute.class_weights)
        loss = loss + weighted_cross_entropy(mixed_logits, mixed_labels, mixed_weights, ignore)
        if batch.labelled is not None:
            loss = loss + segmentation_loss(rest.pop(0), yl, ignore, compute.class_weights)
        for masked in rest:
            loss = loss + weighted_cross_entropy(masked, pseudo, weights, ignore)
        return loss

    def after_step(self, step: int) -> None:
        self.teacher.update(self.model, step - 1)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"student/{k}": v for k, v in self.model.state_dict().items()}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(
            {k.removeprefix("student/"): v for k, v in tensors.items() if k.startswith("student/")}
        )
