"""`Learner`: what one rank owns to train a segmenter (model, optimiser, schedule, loader,
augmentation), and `Finetune`, the supervised method. Each method says only how a batch becomes a
loss (`loss(batch)`); the one epoch loop (`engine.loop.run_epochs`) drives every method, in one
process and on every Ray Train rank alike.

A batch arrives as uint8, is copied to the device (non-blocking, pinned on CUDA), resized to the
working scale and augmented there with Kornia, then fed through forward/backward with optional
AMP, channels-last and `torch.compile`; the lr follows lr * decay**t.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from raysegment.augment import SegmentationAugment, match_batch, resize_batch, to_float
from raysegment.config import RunConfig
from raysegment.data import Batch, EpochSampler, SegmentationDataset, pad_collate
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.evaluate import EvalResult, evaluate
from raysegment.engine.judge import judged_scores
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.schedule import build_optimizer, build_scheduler
from raysegment.models import ModelMeta, Segmenter, build_segmenter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Wrap = Callable[[torch.nn.Module], torch.nn.Module] | None


@dataclass(frozen=True)
class Paired:
    """One step's batches from two sets: `first` defines the step (source labels, say), `second`
    rides along (target images, cycled when the shorter)."""

    first: Batch
    second: Batch


def loader_workers(cfg: RunConfig, device: torch.device) -> int:
    """Decoding processes per loader: the configured number, else what this process's CPU share allows
    (none on <= 2 threads, where a decoder process would only take cores from the step)."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    threads = torch.get_num_threads()
    return 0 if threads <= 2 else min(8, threads // 2 if device.type == "cpu" else threads)


def make_loader(
    dataset: SegmentationDataset, cfg: RunConfig, sampler: EpochSampler, device: torch.device
) -> DataLoader:
    workers = loader_workers(cfg, device)
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=partial(pad_collate, ignore_index=dataset.info.ignore_index),
    )


def endless(loader: DataLoader) -> Iterator[Batch]:
    """Re-iterate a loader (unlike itertools.cycle, which would replay the first pass's tensors)."""
    while True:
        yield from loader


class Learner:
    """Owns model, optimiser, scheduler, augmentation and loader for one rank; a method subclass
    defines `loss(batch)` and, when it reads two sets, `batches()`."""

    def __init__(
        self,
        cfg: RunConfig,
        train_set: SegmentationDataset,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Wrap = None,
        model: Segmenter | None = None,
        sampler: EpochSampler | None = None,
        reference: torch.nn.Module | None = None,
    ) -> None:
        self.cfg, self.info, self.device = cfg, train_set.info, torch.device(device)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(cfg.optim.seed)
        self.model = (model or build_segmenter(cfg.model, self.info.num_classes)).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.module: torch.nn.Module = wrap_model(self.model) if wrap_model else self.model
        if cfg.optim.compile:
            self.module = cast(torch.nn.Module, torch.compile(self.module))  # an OptimizedModule
        self.sampler = sampler or EpochSampler(len(train_set), cfg.optim.seed, rank, world_size)
        self.loader = make_loader(train_set, cfg, self.sampler, self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch)
        self.augment = SegmentationAugment(cfg.augment, self.info.ignore_index).to(self.device)
        weights = cfg.optim.class_weights
        self.class_weights = torch.tensor(weights, device=self.device) if weights else None
        use_amp = self.device.type == "cuda" and cfg.optim.amp != "none"
        self.amp_dtype = AMP_DTYPES.get(cfg.optim.amp) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []
        self.reference = None  # the starting model, kept when results are judged by proxies
        if cfg.judge == "proxy":
            self.reference = (reference or copy.deepcopy(self.model)).to(self.device).eval().requires_grad_(False)
        self.best_epoch, self.best_scores = -1, {"score": -math.inf}
        self._best_model: torch.nn.Module | None = None

    # --- what a method defines ------------------------------------------------------------------
    def loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def batches(self) -> Iterable[Any]:
        """This rank's batches for the current epoch."""
        self.sampler.set_epoch(self.epoch)
        return self.loader

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def total_epochs(self) -> int:
        return self.cfg.optim.epochs

    @property
    def deployable(self) -> torch.nn.Module:
        """The model a checkpoint of this run should serve."""
        return self.model

    def after_step(self) -> None:
        """Hook run after every optimiser step (the mean teacher's EMA update)."""

    def after_epoch(self) -> None:
        """Hook run after every epoch (the mean teacher's BatchNorm refresh)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the deployable model that an exact resume needs (e.g. the student)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `extra_state`."""

    # --- the step -------------------------------------------------------------------------------
    @property
    def meta(self) -> ModelMeta:
        return ModelMeta(
            model=self.cfg.model,
            num_classes=self.info.num_classes,
            classes=self.info.classes,
            palette=self.info.palette,
            ignore_index=self.info.ignore_index,
            resize=self.cfg.data.resize,
        )

    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (images (B,3,h,w) float [0,1], masks (B,h,w)) on the device at working scale."""
        moved = batch.to(self.device, non_blocking=True)
        return resize_batch(
            to_float(moved.images), moved.masks, batch.sizes, self.cfg.data.resize, self.info.ignore_index
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The (DDP-wrapped) model on a float batch, with channels-last and AMP on CUDA."""
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            return self.module(images)

    def train_step(self, batch: Any) -> torch.Tensor:
        """One optimiser step; returns the loss (a device tensor: no host sync per step)."""
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.after_step()
        return loss.detach()

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over this rank's shard; returns mean loss, lr and throughput."""
        self.module.train()
        start, losses, seen = time.perf_counter(), [], 0
        lr = max(group["lr"] for group in self.optimizer.param_groups)  # the head's (the backbone's may be scaled)
        batches = self.batches()
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            batches = bar = tqdm(
                batches,
                desc=f"epoch {self.epoch + 1}/{self.total_epochs}",
                leave=False,
                unit="batch",
                total=self.steps_per_epoch,
            )
        for batch in batches:
            losses.append(self.train_step(batch))
            seen += (batch.first if isinstance(batch, Paired) else batch).images.shape[0]
            if bar is not None:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
        self.after_epoch()
        self.epoch += 1
        seconds = time.perf_counter() - start
        mean_loss = float(torch.stack(losses).float().mean()) if losses else 0.0
        stats = {
            "epoch": self.epoch,
            "loss": mean_loss,
            "lr": lr,
            "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9),
        }
        self.history.append(stats)
        return stats

    # --- judging and selecting ------------------------------------------------------------------
    def evaluate(self, dataset: SegmentationDataset, model: torch.nn.Module | None = None) -> EvalResult:
        return evaluate(
            model or self.deployable,
            dataset,
            self.cfg.eval,
            self.device,
            window=self.cfg.augment.crop,
            resize=self.cfg.data.resize,
            rank=self.rank,
            world_size=self.world_size,
        )

    def score(self, dataset: SegmentationDataset, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Held-back metrics; `score` selects and promotes: val mIoU when target labels judge, the
        unsupervised proxy on the val images otherwise (their masks are then never read)."""
        judge = "labels" if self.reference is None else "proxy"
        return judged_scores(
            model or self.deployable, dataset, self.cfg, judge, self.reference, self.device, self.rank, self.world_size
        )

    @property
    def selects_start(self) -> bool:
        """The start model is a candidate when labels judge: a few labels must never make it worse."""
        return self.cfg.optim.select == "best" and self.reference is None

    def remember(self, epoch: int, scores: dict[str, float]) -> None:
        """Keep the deployable model of the best-scored epoch (`optim.select=best`); ties keep the earlier."""
        if self.cfg.optim.select == "last":
            self.best_epoch, self.best_scores = epoch, dict(scores)
            return
        if not scores["score"] > self.best_scores["score"]:
            return
        self.best_epoch, self.best_scores = epoch, dict(scores)
        if self._best_model is None:
            self._best_model = copy.deepcopy(self.deployable).eval().requires_grad_(False)
        else:
            self._best_model.load_state_dict(self.deployable.state_dict())

    def selected_model(self) -> torch.nn.Module:
        """The result of the run: the best-scored epoch's model, or the last one's."""
        if self.cfg.optim.select == "last" or self._best_model is None:
            return self.deployable
        return self._best_model

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        counters = {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_scores": self.best_scores,
        }
        return ckpt.save_checkpoint(
            folder,
            self.deployable,
            self.meta,
            self.optimizer,
            self.scheduler,
            counters,
            extra_tensors=self.extra_state(),
            selected=self.selected_model(),
        )

    def restore(self, folder: str | Path) -> None:
        counters = ckpt.load_checkpoint(folder, self.deployable, self.optimizer, self.scheduler)
        self.load_extra_state(ckpt.load_extra_tensors(folder))
        self.epoch, self.step, self.history = counters["epoch"], counters["step"], counters["history"]
        self.best_epoch = counters["best_epoch"]
        self.best_scores = counters["best_scores"]
        if self.best_epoch >= 0:
            self._best_model = copy.deepcopy(self.deployable).eval().requires_grad_(False)
            self._best_model.load_state_dict(ckpt.load_selected_weights(folder))


class Finetune(Learner):
    """Supervised cross-entropy on labelled images; with `replay`, every step also trains on a
    source batch, so a few target labels adapt the model without it forgetting the source."""

    def __init__(
        self,
        cfg: RunConfig,
        train_set: SegmentationDataset,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Wrap = None,
        model: Segmenter | None = None,
        replay: SegmentationDataset | None = None,
    ) -> None:
        self.replay_loader = None
        if replay is not None:
            self.replay_sampler = EpochSampler(len(replay), cfg.optim.seed + 1, rank, world_size)
            self.replay_loader = make_loader(replay, cfg, self.replay_sampler, torch.device(device))
        super().__init__(cfg, train_set, device, rank, world_size, wrap_model, model)

    @property
    def steps_per_epoch(self) -> int:
        """With replay an epoch is a pass over the larger of the two sets, the smaller one cycled."""
        return max(len(self.loader), len(self.replay_loader)) if self.replay_loader is not None else len(self.loader)

    def batches(self) -> Iterable[Batch | Paired]:
        self.sampler.set_epoch(self.epoch)
        if self.replay_loader is None:
            return self.loader
        self.replay_sampler.set_epoch(self.epoch)
        targets, sources = endless(self.loader), endless(self.replay_loader)
        return (Paired(next(targets), next(sources)) for _ in range(self.steps_per_epoch))

    def loss(self, batch: Batch | Paired) -> torch.Tensor:
        ignore = self.info.ignore_index
        if isinstance(batch, Batch):
            images, masks = self.augment(*self.to_device(batch))
            return segmentation_loss(self.forward(images), masks, ignore, self.class_weights)
        xt, yt = self.augment(*self.to_device(batch.first))
        xs, ys = self.augment(*self.to_device(batch.second))
        xs, ys = match_batch(xs, ys, xs.shape[0], (xt.shape[-2], xt.shape[-1]))
        logits = self.forward(torch.cat([xt, xs]))  # one forward: DDP expects one per backward
        target_logits, source_logits = logits.split([xt.shape[0], xs.shape[0]])
        return segmentation_loss(target_logits, yt, ignore, self.class_weights) + segmentation_loss(
            source_logits, ys, ignore, self.class_weights
        )
