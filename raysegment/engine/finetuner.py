"""`FineTuner`: the training loop as small steps that Ray Train can drive rank by rank, and
`fit`, the same loop in one plain process.

Per epoch: the sampler orders the data from (seed, epoch) alone; batches arrive as uint8 and are
moved to the device, augmented there with Kornia, and fed through forward/backward with optional
AMP and gradient clipping; the lr follows lr * decay**t.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from raysegment.augment import SegmentationAugment
from raysegment.config import RunConfig
from raysegment.data import EpochSampler, SegmentationDataset, UnlabelledView, pad_collate
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.evaluate import EvalResult, evaluate
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.proxies import proxy_scores
from raysegment.engine.schedule import build_optimizer, build_scheduler
from raysegment.models import ModelMeta, Segmenter, build_segmenter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class FineTuner:
    """Owns model, optimiser, scheduler, augmentation and loader for one rank."""

    def __init__(self, cfg: RunConfig, train_set: SegmentationDataset, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 model: Segmenter | None = None, sampler: EpochSampler | None = None,
                 reference: torch.nn.Module | None = None) -> None:
        self.cfg, self.info, self.device = cfg, train_set.info, torch.device(device)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(cfg.optim.seed)
        self.model = (model or build_segmenter(cfg.model, self.info.num_classes)).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.module = wrap_model(self.model) if wrap_model else self.model
        self.sampler = sampler or EpochSampler(len(train_set), cfg.optim.seed, rank, world_size)
        self.loader = DataLoader(train_set, batch_size=cfg.optim.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                 collate_fn=partial(pad_collate, ignore_index=self.info.ignore_index),
                                 persistent_workers=cfg.data.num_workers > 0)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, len(self.loader))
        self.augment = SegmentationAugment(cfg.augment, self.info.ignore_index).to(self.device)
        weights = cfg.optim.class_weights
        self.class_weights = torch.tensor(weights, device=self.device) if weights else None
        use_amp = self.device.type == "cuda" and cfg.optim.amp != "none"
        self.amp_dtype = AMP_DTYPES.get(cfg.optim.amp) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.epoch, self.step, self.history = 0, 0, []
        self.reference = None  # the starting model, kept when results are judged by proxies
        if cfg.adapt.judged_by == "proxy":
            self.reference = (reference or copy.deepcopy(self.model)).to(self.device).eval().requires_grad_(False)

    @property
    def total_epochs(self) -> int:
        return self.cfg.optim.epochs

    @property
    def deployable(self) -> torch.nn.Module:
        """The model a checkpoint of this run should serve."""
        return self.model

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta(model=self.cfg.model, num_classes=self.info.num_classes, classes=self.info.classes,
                         palette=self.info.palette, ignore_index=self.info.ignore_index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The (DDP-wrapped) model on a float batch, with channels-last and AMP on CUDA."""
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with autocast:
            return self.module(images)

    def compute_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Supervised cross-entropy on an augmented uint8 batch."""
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        images, masks = self.augment(images, masks)
        return segmentation_loss(self.forward(images), masks, self.info.ignore_index, self.class_weights)

    def batches(self):
        """This rank's batches for the current epoch."""
        self.sampler.set_epoch(self.epoch)
        return self.loader

    def after_step(self) -> None:
        """Hook run after every optimiser step (the mean teacher's EMA update)."""

    def train_step(self, *batch: torch.Tensor) -> float:
        """One optimiser step on a uint8 batch; returns the loss."""
        loss = self.compute_loss(*batch)
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
        return float(loss.detach())

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over this rank's shard; returns mean loss, lr and throughput."""
        self.module.train()
        start, losses, seen = time.perf_counter(), [], 0
        lr = self.optimizer.param_groups[0]["lr"]
        batches = tqdm(self.batches(), desc=f"epoch {self.epoch + 1}/{self.total_epochs}", leave=False,
                       disable=not (progress and sys.stderr.isatty()), unit="batch")
        for batch in batches:
            losses.append(self.train_step(*batch))
            seen += batch[0].shape[0]
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
        self.epoch += 1
        seconds = time.perf_counter() - start
        stats = {"epoch": self.epoch, "loss": sum(losses) / max(1, len(losses)), "lr": lr,
                 "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}
        self.history.append(stats)
        return stats

    def evaluate(self, dataset: SegmentationDataset) -> EvalResult:
        return evaluate(self.deployable, dataset, self.cfg.eval, self.device, window=self.cfg.augment.crop,
                        rank=self.rank, world_size=self.world_size)

    def score(self, dataset: SegmentationDataset) -> dict[str, float]:
        """Validation metrics; `score` is what selects and promotes: val mIoU when target labels judge,
        the unsupervised proxy on the (unlabelled) val images otherwise."""
        metrics = {"val_miou": self.evaluate(dataset).miou}
        if self.reference is None:
            return {**metrics, "score": metrics["val_miou"]}
        proxies = proxy_scores(self.deployable, self.reference, UnlabelledView(dataset), self.info.num_classes,
                               self.cfg.adapt.proxy_confidence, self.device, self.cfg.eval.batch_size)
        return {**metrics, **proxies.as_metrics(), "score": proxies.score}

    def save(self, folder: str | Path) -> Path:
        return ckpt.save_checkpoint(folder, self.deployable, self.meta, self.optimizer, self.scheduler,
                                    {"epoch": self.epoch, "step": self.step, "history": self.history},
                                    extra_tensors=self.extra_state())

    def restore(self, folder: str | Path) -> None:
        counters = ckpt.load_checkpoint(folder, self.deployable, self.optimizer, self.scheduler)
        self.load_extra_state(ckpt.load_extra_tensors(folder))
        self.epoch, self.step, self.history = counters["epoch"], counters["step"], counters["history"]

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the deployable model that an exact resume needs (e.g. the student)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `extra_state`."""


def fit(cfg: RunConfig, train_set: SegmentationDataset, val_set: SegmentationDataset | None = None,
        device: torch.device | str | None = None, resume: bool = True, progress: bool = True,
        log: Callable[[str], Any] = print, model: Segmenter | None = None) -> FineTuner:
    """Fine-tune in this process, checkpointing every epoch under `cfg.output_dir`.

    With `resume`, an interrupted run continues from its latest checkpoint and reproduces the
    uninterrupted run (the data order and RNG state are restored exactly).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tuner = FineTuner(cfg, train_set, device, model=model)
    return run_epochs(tuner, cfg, val_set, resume, progress, log)


def run_epochs(tuner: FineTuner, cfg: RunConfig, val_set: SegmentationDataset | None = None, resume: bool = True,
               progress: bool = True, log: Callable[[str], Any] = print) -> FineTuner:
    """Train `tuner` to its last epoch in this process, scoring and checkpointing every epoch."""
    run_dir = Path(cfg.output_dir)
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        tuner.restore(latest)
        log(f"resumed from {latest} (epoch {tuner.epoch})")
    while tuner.epoch < tuner.total_epochs:
        stats = tuner.train_epoch(progress)
        line = (f"epoch {stats['epoch']}/{tuner.total_epochs}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
                f"{stats['images_per_s']:.1f} img/s")
        if val_set is not None:
            stats.update(tuner.score(val_set))
            line += f"  val mIoU {100 * stats['val_miou']:.1f}"
            if tuner.reference is not None:
                line += f"  proxy {100 * stats['score']:.1f}"
        log(line)
        tuner.save(ckpt.epoch_dir(run_dir, tuner.epoch))
        ckpt.mark_latest(run_dir, tuner.epoch)
    return tuner
