"""`FineTuner`: the training loop as small steps that Ray Train can drive rank by rank, and
`fit`, the same loop in one plain process.

Per epoch: the sampler orders the data from (seed, epoch) alone; batches arrive as uint8 and are
moved to the device, augmented there with Kornia, and fed through forward/backward with optional
AMP and gradient clipping; the lr follows lr * decay**t.
"""

from __future__ import annotations

import contextlib
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
from raysegment.data import EpochSampler, SegmentationDataset, pad_collate
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.evaluate import EvalResult, evaluate
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.schedule import build_optimizer, build_scheduler
from raysegment.models import ModelMeta, Segmenter, build_segmenter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class FineTuner:
    """Owns model, optimiser, scheduler, augmentation and loader for one rank."""

    def __init__(self, cfg: RunConfig, train_set: SegmentationDataset, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 model: Segmenter | None = None) -> None:
        self.cfg, self.info, self.device = cfg, train_set.info, torch.device(device)
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(cfg.optim.seed)
        self.model = (model or build_segmenter(cfg.model, self.info.num_classes)).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.module = wrap_model(self.model) if wrap_model else self.model
        self.sampler = EpochSampler(len(train_set), cfg.optim.seed, rank, world_size)
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

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta(model=self.cfg.model, num_classes=self.info.num_classes, classes=self.info.classes,
                         palette=self.info.palette, ignore_index=self.info.ignore_index)

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        """One optimiser step on a uint8 batch; returns the loss."""
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        images, masks = self.augment(images, masks)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with autocast:
            logits = self.module(images)
        loss = segmentation_loss(logits, masks, self.info.ignore_index, self.class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over this rank's shard; returns mean loss, lr and throughput."""
        self.module.train()
        self.sampler.set_epoch(self.epoch)
        start, losses, seen = time.perf_counter(), [], 0
        lr = self.optimizer.param_groups[0]["lr"]
        batches = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", leave=False,
                       disable=not (progress and sys.stderr.isatty()), unit="batch")
        for images, masks in batches:
            losses.append(self.train_step(images, masks))
            seen += images.shape[0]
            batches.set_postfix(loss=f"{losses[-1]:.3f}")
        self.epoch += 1
        seconds = time.perf_counter() - start
        stats = {"epoch": self.epoch, "loss": sum(losses) / max(1, len(losses)), "lr": lr,
                 "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}
        self.history.append(stats)
        return stats

    def evaluate(self, dataset: SegmentationDataset) -> EvalResult:
        return evaluate(self.model, dataset, self.cfg.eval, self.device, window=self.cfg.augment.crop,
                        rank=self.rank, world_size=self.world_size)

    def save(self, folder: str | Path) -> Path:
        return ckpt.save_checkpoint(folder, self.model, self.meta, self.optimizer, self.scheduler,
                                    {"epoch": self.epoch, "step": self.step, "history": self.history})

    def restore(self, folder: str | Path) -> None:
        counters = ckpt.load_checkpoint(folder, self.model, self.optimizer, self.scheduler)
        self.epoch, self.step, self.history = counters["epoch"], counters["step"], counters["history"]


def fit(cfg: RunConfig, train_set: SegmentationDataset, val_set: SegmentationDataset | None = None,
        device: torch.device | str | None = None, resume: bool = True, progress: bool = True,
        log: Callable[[str], Any] = print, model: Segmenter | None = None) -> FineTuner:
    """Fine-tune in this process, checkpointing every epoch under `cfg.output_dir`.

    With `resume`, an interrupted run continues from its latest checkpoint and reproduces the
    uninterrupted run (the data order and RNG state are restored exactly).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tuner = FineTuner(cfg, train_set, device, model=model)
    run_dir = Path(cfg.output_dir)
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        tuner.restore(latest)
        log(f"resumed from {latest} (epoch {tuner.epoch})")
    while tuner.epoch < cfg.optim.epochs:
        stats = tuner.train_epoch(progress)
        line = (f"epoch {stats['epoch']}/{cfg.optim.epochs}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
                f"{stats['images_per_s']:.1f} img/s")
        if val_set is not None:
            result = tuner.evaluate(val_set)
            stats["val_miou"] = result.miou
            line += f"  val mIoU {100 * result.miou:.1f}"
        log(line)
        tuner.save(ckpt.epoch_dir(run_dir, tuner.epoch))
        ckpt.mark_latest(run_dir, tuner.epoch)
    return tuner
