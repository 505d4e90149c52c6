"""Ray Train shell around the engine: `fine_tune(cfg)` runs `FineTuner` on every rank.

Each rank reads its shard (the epoch sampler splits by rank), augments on its own device with
Kornia, and steps a DDP model (nccl on GPU, gloo on CPU). Every epoch all ranks report metrics;
rank 0 also hands Ray a full engine checkpoint. After a worker dies, Ray Train restarts the group
(`FailureConfig(max_failures)`) and every rank resumes from the latest reported checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from raysegment.config import RunConfig
from raysegment.data import open_split
from raysegment.engine.adapt import build_tuner
from raysegment.errors import RaySegmentError

PROGRESS_FILE = "progress.jsonl"


@dataclass
class FineTuneResult:
    metrics: dict[str, Any]
    checkpoint_dir: Path | None
    storage_dir: str
    seconds: float


def train_loop_per_worker(config: dict) -> None:
    """The per-rank function Ray Train runs: a plain function of a config dict."""
    cfg = RunConfig.model_validate(config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scale.cpus_per_worker) or 1))
    d = cfg.data
    val_set = open_split(d.root, d.domain, d.val_split, d.layout)
    sync_bn = cfg.scale.sync_batchnorm if cfg.scale.sync_batchnorm is not None else device.type == "cuda"

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        if sync_bn and world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    tuner = build_tuner(cfg, device, rank=rank, world_size=world, wrap_model=wrap)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            tuner.restore(Path(folder) / "engine")
        torch.manual_seed(cfg.optim.seed * 7919 + rank * 104_729 + tuner.epoch)  # per-rank augmentation stream
    else:
        torch.manual_seed(cfg.optim.seed * 7919 + rank * 104_729)
    progress = Path(cfg.output_dir) / PROGRESS_FILE
    progress.parent.mkdir(parents=True, exist_ok=True)
    while tuner.epoch < tuner.total_epochs:
        stats = tuner.train_epoch()
        scores = tuner.score(val_set)  # mIoU sharded (confusion matrices summed over ranks); proxies per rank
        metrics = {**stats, **scores, "world_size": world, "resumed": checkpoint is not None,
                   "method": cfg.adapt.method, "weights_checksum": weights_checksum(tuner.deployable)}
        if rank == 0:
            print(f"[rank 0] {cfg.adapt.method} epoch {tuner.epoch}/{tuner.total_epochs} loss {stats['loss']:.4f} "
                  f"lr {stats['lr']:.2e} val mIoU {100 * scores['val_miou']:.1f} score {100 * scores['score']:.1f} "
                  f"({stats['images_per_s']:.1f} img/s per rank)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                tuner.save(Path(tmp) / "engine")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            # One line per reported (committed) epoch: learning curves and recovery checks read it.
            progress.parent.mkdir(parents=True, exist_ok=True)
            with open(progress, "a") as handle:
                handle.write(json.dumps({**metrics, "time": time.time()}) + "\n")
        else:
            ray.train.report(metrics)
        # Every rank's line: replicas (a mean teacher's EMA included) must stay identical across ranks.
        with open(Path(cfg.output_dir) / f"ranks.{rank}.jsonl", "a") as handle:
            handle.write(json.dumps({"epoch": tuner.epoch, "weights_checksum": metrics["weights_checksum"]}) + "\n")


def weights_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights (sum of |w|, float64) to compare replicas across ranks."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.state_dict().values() if p.is_floating_point()))


def scaling_config(cfg: RunConfig) -> ray.train.ScalingConfig:
    s = cfg.scale
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                   placement_strategy=s.placement_strategy)


def storage_path(cfg: RunConfig) -> str:
    path = cfg.scale.storage_path or str(Path(cfg.output_dir) / "ray")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_resources(cfg: RunConfig) -> None:
    """Fail at once, naming the resource, when the cluster can never host the workers."""
    s = cfg.scale
    total = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise RaySegmentError(f"scale asks for {s.num_workers} workers x {s.cpus_per_worker} CPU = {need_cpu} CPU "
                              f"but the cluster has {total.get('CPU', 0)}; lower scale.num_workers or cpus_per_worker")
    if s.use_gpu and s.num_workers * s.gpus_per_worker > total.get("GPU", 0):
        raise RaySegmentError(f"scale asks for {s.num_workers * s.gpus_per_worker} GPU but the cluster has "
                              f"{total.get('GPU', 0)}; set scale.use_gpu=false or add GPU nodes")
    largest = largest_node_cpus()
    if s.cpus_per_worker > largest:
        raise RaySegmentError(f"one worker needs {s.cpus_per_worker} CPU but the largest node has {largest}; "
                              f"lower scale.cpus_per_worker")
    if s.placement_strategy == "STRICT_SPREAD":
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= s.cpus_per_worker]
        if len(nodes) < s.num_workers:
            raise RaySegmentError(f"STRICT_SPREAD needs {s.num_workers} nodes with {s.cpus_per_worker} CPU each; "
                                  f"the cluster has {len(nodes)}")


def largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)


def fine_tune(cfg: RunConfig, name: str | None = None) -> FineTuneResult:
    """Run a distributed fine-tune on the connected (or an embedded local) Ray cluster."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), log_to_driver=True)
    check_resources(cfg)
    # A worker group that cannot start (resources gone) must fail, not wait forever.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(cfg.scale.start_timeout_s))
    run_name = name or Path(cfg.output_dir).name
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json")},
        scaling_config=scaling_config(cfg),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if cfg.scale.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    start = time.perf_counter()
    result = trainer.fit()
    if result.error is not None:
        raise RaySegmentError(f"distributed fine-tune {run_name} failed: {result.error}")
    ckpt_dir = None
    if result.checkpoint is not None:
        ckpt_dir = Path(result.checkpoint.path) / "engine" if "://" not in result.checkpoint.path else None
    return FineTuneResult(dict(result.metrics or {}), ckpt_dir, f"{storage_path(cfg)}/{run_name}",
                          time.perf_counter() - start)
