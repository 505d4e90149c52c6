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
from raysegment.engine.finetune import Finetune
from raysegment.engine.method import Placement
from raysegment.engine.runner import Runner
from raysegment.models.segmenter import Segmenter, build_segmenter

EpochSink = Callable[[Runner, dict[str, Any], bool], None]  # (runner, epoch metrics, checkpoint due)


def run_epochs(runner: Runner, val_set: SegmentationDataset | None, sink: EpochSink, progress: bool = False) -> Runner:
    """Train `runner` from its current epoch to its last; `val_set` scores and selects epochs."""
    optim = runner.method.cfg.optim
    if val_set is not None and runner.epoch == 0 and runner.selects_start:
        runner.remember(0, runner.score(val_set))  # the start model is a candidate too
    while runner.epoch < runner.method.epochs:
        stats = runner.train_epoch(progress)
        last = runner.epoch == runner.method.epochs
        if val_set is not None and (last or runner.epoch % optim.eval_every == 0):
            scores = runner.score(val_set)
            stats.update(scores)
            runner.remember(runner.epoch, scores)
        if runner.best_epoch >= 0:
            stats.update({f"selected_{k}": v for k, v in runner.best_scores.items()}, selected_epoch=runner.best_epoch)
        sink(runner, stats, last or runner.epoch % optim.checkpoint_every == 0)
    return runner


def epoch_line(runner: Runner, stats: dict[str, Any]) -> str:
    line = (
        f"epoch {stats['epoch']}/{runner.method.epochs}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  "
        f"{stats['images_per_s']:.1f} img/s"
    )
    if "val_miou" in stats:
        line += f"  val mIoU {100 * stats['val_miou']:.1f}"
    if "proxy_score" in stats:
        line += f"  proxy {100 * stats['proxy_score']:.1f}"
    return line


def local_checkpoints(run_dir: str | Path, log: Callable[[str], Any] = print) -> EpochSink:
    """The one-process sink: a log line per epoch, atomic checkpoints under `run_dir/checkpoints`."""

    def sink(runner: Runner, stats: dict[str, Any], save: bool) -> None:
        log(epoch_line(runner, stats))
        if save:
            runner.save(ckpt.epoch_dir(run_dir, runner.epoch))
            ckpt.mark_latest(run_dir, runner.epoch)

    return sink


def train_in_process(
    runner: Runner,
    val_set: SegmentationDataset | None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Runner:
    """Train to the last epoch in this process, resuming from the run's latest checkpoint."""
    run_dir = Path(runner.method.cfg.output_dir)
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        runner.restore(latest)
        log(f"resumed from {latest} (epoch {runner.epoch})")
    return run_epochs(runner, val_set, local_checkpoints(run_dir, log), progress)


def fit(
    cfg: RunConfig,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None = None,
    device: torch.device | str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    model: Segmenter | None = None,
) -> Runner:
    """Supervised fine-tuning in this process, checkpointed under `cfg.output_dir`.

    With `resume`, an interrupted run continues from its latest checkpoint and reproduces the
    uninterrupted run (the data order and RNG state are restored exactly).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return train_in_process(finetune_runner(cfg, train_set, device, model), val_set, resume, progress, log)


def finetune_runner(
    cfg: RunConfig, train_set: SegmentationDataset, device: torch.device | str = "cpu", model: Segmenter | None = None
) -> Runner:
    """A one-process `Runner` of supervised fine-tuning on `train_set`. Seeded first, as
    `engine.adapt.build_runner` is, so a new head's weights follow the seed."""
    torch.manual_seed(cfg.optim.seed)
    model = model or build_segmenter(cfg.model, train_set.info.num_classes)
    return Runner(Finetune(cfg, model=model, train_set=train_set, placement=Placement.of(device)))
