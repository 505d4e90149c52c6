"""`Runner`: what one rank owns to run any `Method` (Lightning's split: the method says how a batch
becomes a loss; the runner owns the rest): the device placement and (DDP) wrapping, precision,
`torch.compile`, the optimiser and the lr schedule lr * decay**t, the epoch's steps, held-back
scoring and best-epoch selection, and exact checkpoints. The one epoch loop
(`engine.epochs.run_epochs`) drives a runner in one process and on every Ray Train rank alike.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

from raysegment.data import SegmentationDataset
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.judge import judged_scores
from raysegment.engine.method import Compute, Method, Wrap
from raysegment.engine.schedule import build_optimizer, build_scheduler
from raysegment.models.io import ModelMeta


class Runner:
    """Trains `method` on this rank: optimiser over its trainable parameters, steps, epochs, scores,
    the best-scored epoch's model and resumable checkpoints."""

    def __init__(self, method: Method, *, wrap_model: Wrap = None) -> None:
        self.method, cfg = method, method.cfg
        model, device = method.model, method.device
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        trains = any(p.requires_grad for p in model.parameters())  # DDP refuses a model with nothing to train
        module: torch.nn.Module = wrap_model(model) if wrap_model and trains else model
        if cfg.optim.compile:
            module = cast(torch.nn.Module, torch.compile(module))  # an OptimizedModule
        self.module = module
        self.compute = Compute(cfg, method.info.ignore_index, device, module)
        self.optimizer = build_optimizer(model, cfg.optim)  # empty for a method that trains nothing (AdaBN)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, max(1, method.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.compute.amp_dtype is torch.float16)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_scores = -1, {"score": -math.inf}
        self._best_model: torch.nn.Module | None = None

    # --- what the loop and callers read (the method's own facts are read on `self.method`) -------
    @property
    def meta(self) -> ModelMeta:
        info = self.method.info
        return ModelMeta(
            model=self.method.cfg.model,
            num_classes=info.num_classes,
            classes=info.classes,
            palette=info.palette,
            ignore_index=info.ignore_index,
            resize=self.method.cfg.data.resize,
        )

    # --- the step and the epoch -----------------------------------------------------------------
    def train_step(self, batch: Any) -> torch.Tensor:
        """One optimiser step; returns the loss (a device tensor: no host sync per step)."""
        loss = self.method.loss(batch, self.compute)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.method.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.model.parameters(), self.method.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.method.after_step(self.step)
        return loss.detach()

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over this rank's share; returns mean loss, lr and throughput."""
        self.module.train()
        start, losses, seen = time.perf_counter(), [], 0
        groups = self.optimizer.param_groups
        lr = max((g["lr"] for g in groups if g["params"]), default=0.0)  # the head's (the backbone's may be scaled)
        batches = self.method.batches(self.epoch)
        bar = None
        if progress and sys.stderr.isatty() and self.method.steps_per_epoch:
            from tqdm.auto import tqdm

            batches = bar = tqdm(
                batches,
                desc=f"epoch {self.epoch + 1}/{self.method.epochs}",
                leave=False,
                unit="batch",
                total=self.method.steps_per_epoch,
            )
        for batch in batches:
            losses.append(self.train_step(batch))
            seen += self.method.images_in(batch)
            if bar is not None:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
        self.epoch += 1
        self.method.after_epoch(self.epoch)
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
    def score(self, dataset: SegmentationDataset, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Held-back metrics; `score` selects and promotes: val mIoU when target labels judge, the
        label-free proxy against the method's start model otherwise (val masks then never read)."""
        return judged_scores(
            model or self.method.deployable,
            dataset,
            self.method.cfg,
            self.method.cfg.judge,
            self.method.reference,
            self.method.device,
            self.method.placement.rank,
            self.method.placement.world_size,
        )

    @property
    def selects_start(self) -> bool:
        """The start model is a candidate when labels judge: a few labels must never make it worse."""
        return self.method.cfg.optim.select == "best" and self.method.cfg.judge == "labels"

    def remember(self, epoch: int, scores: dict[str, float]) -> None:
        """Keep the deployable model of the best-scored epoch (`optim.select=best`); ties keep the earlier."""
        if self.method.cfg.optim.select == "last":
            self.best_epoch, self.best_scores = epoch, dict(scores)
            return
        if not scores["score"] > self.best_scores["score"]:
            return
        self.best_epoch, self.best_scores = epoch, dict(scores)
        if self._best_model is None:
            self._best_model = copy.deepcopy(self.method.deployable).eval().requires_grad_(False)
        else:
            self._best_model.load_state_dict(self.method.deployable.state_dict())

    def selected_model(self) -> torch.nn.Module:
        """The result of the run: the best-scored epoch's model, or the last one's."""
        if self.method.cfg.optim.select == "last" or self._best_model is None:
            return self.method.deployable
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
            self.method.deployable,
            self.meta,
            self.optimizer,
            self.scheduler,
            counters,
            extra_tensors=self.method.extra_state(),
            selected=self.selected_model(),
        )

    def restore(self, folder: str | Path) -> None:
        counters = ckpt.load_checkpoint(folder, self.method.deployable, self.optimizer, self.scheduler)
        self.method.load_extra_state(ckpt.load_extra_tensors(folder))
        self.epoch, self.step, self.history = counters["epoch"], counters["step"], counters["history"]
        self.best_epoch = counters["best_epoch"]
        self.best_scores = counters["best_scores"]
        if self.best_epoch >= 0:
            self._best_model = copy.deepcopy(self.method.deployable).eval().requires_grad_(False)
            self._best_model.load_state_dict(ckpt.load_selected_weights(folder))
