"""The one epoch loop, shared by the one-process run (`train_in_process`, `fit`) and every Ray Train
rank (`raysegment.distributed.train`): train an epoch, score it on held-back images every `eval_every` epochs,
remember the best, and hand the epoch to a sink that logs, checkpoints (every `checkpoint_every`
epochs) or reports it. The last epoch is always scored and checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raysegment.config import RunConfig
from raysegment.data import SegmentationDataset
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.learner import Finetune, Learner
from raysegment.models import Segmenter

EpochSink = Callable[[Learner, dict[str, Any], bool], None]  # (learner, epoch metrics, checkpoint due)


def run_epochs(
    learner: Learner, val_set: SegmentationDataset | None, sink: EpochSink, progress: bool = False
) -> Learner:
    """Train `learner` from its current epoch to its last; `val_set` scores and selects epochs."""
    optim = learner.cfg.optim
    if val_set is not None and learner.epoch == 0 and learner.selects_start:
        learner.remember(0, learner.score(val_set))  # the start model is a candidate too
    while learner.epoch < learner.total_epochs:
        stats = learner.train_epoch(progress)
        last = learner.epoch == learner.total_epochs
        if val_set is not None and (last or learner.epoch % optim.eval_every == 0):
            scores = learner.score(val_set)
            stats.update(scores)
            learner.remember(learner.epoch, scores)
        if learner.best_epoch >= 0:
            stats.update(
                {f"selected_{k}": v for k, v in learner.best_scores.items()}, selected_epoch=learner.best_epoch
            )
        sink(learner, stats, last or learner.epoch % optim.checkpoint_every == 0)
    return learner


def epoch_line(learner: Learner, stats: dict[str, Any]) -> str:
    line = (
        f"epoch {stats['epoch']}/{learner.total_epochs}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
        f"{stats['images_per_s']:.1f} img/s"
    )
    if "val_miou" in stats:
        line += f"  val mIoU {100 * stats['val_miou']:.1f}"
    if "proxy_score" in stats:
        line += f"  proxy {100 * stats['proxy_score']:.1f}"
    return line


def local_checkpoints(run_dir: str | Path, log: Callable[[str], Any] = print) -> EpochSink:
    """The one-process sink: a log line per epoch, atomic checkpoints under `run_dir/checkpoints`."""

    def sink(learner: Learner, stats: dict[str, Any], save: bool) -> None:
        log(epoch_line(learner, stats))
        if save:
            learner.save(ckpt.epoch_dir(run_dir, learner.epoch))
            ckpt.mark_latest(run_dir, learner.epoch)

    return sink


def train_in_process(
    learner: Learner,
    val_set: SegmentationDataset | None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Learner:
    """Train to the last epoch in this process, resuming from the run's latest checkpoint."""
    run_dir = Path(learner.cfg.output_dir)
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        learner.restore(latest)
        log(f"resumed from {latest} (epoch {learner.epoch})")
    return run_epochs(learner, val_set, local_checkpoints(run_dir, log), progress)


def fit(
    cfg: RunConfig,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None = None,
    device: torch.device | str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    model: Segmenter | None = None,
) -> Learner:
    """Supervised fine-tuning in this process, checkpointed under `cfg.output_dir`.

    With `resume`, an interrupted run continues from its latest checkpoint and reproduces the
    uninterrupted run (the data order and RNG state are restored exactly).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return train_in_process(Finetune(cfg, train_set, device, model=model), val_set, resume, progress, log)
