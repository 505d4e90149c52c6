"""Ray Train shell around the engine: `train_on_ray(cfg)` runs the engine's one epoch loop on every rank.

Each rank reads its shard (the epoch sampler splits by rank; decoded in the rank by a DataLoader,
or by Ray Data tasks for a dataset in object storage: `distributed.ingest`), augments on its own
device with Kornia, and steps a DDP model (nccl on GPU, gloo on CPU). Every epoch all ranks report metrics;
rank 0 also hands Ray a full engine checkpoint. After a worker dies, Ray Train restarts the group
(`FailureConfig(max_failures)`) and every rank resumes from the latest reported checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from raysegment.config import RunConfig
from raysegment.distributed.ingest import loader_factory, uses_ray_data
from raysegment.engine.adapt import build_runner, open_val, with_target_scale
from raysegment.engine.checkpoint import SELECTED
from raysegment.engine.epochs import EpochSink, epoch_line, run_epochs
from raysegment.engine.method import Placement
from raysegment.engine.runner import Runner
from raysegment.errors import RaySegmentError
from raysegment.storage import check_not_placeholder, is_uri

PROGRESS_FILE = "progress.jsonl"


@dataclass
class RayTrainResult:
    metrics: dict[str, Any]
    checkpoint_dir: Path | None  # the last engine checkpoint (resumable)
    model_dir: Path | None  # the run's selected model inside it (best-scored epoch, or last)
    storage_dir: str
    seconds: float


EpochHook = Callable[[Runner, dict[str, Any], int], None]  # (runner, metrics, rank), e.g. for tests


def ray_sink(cfg: RunConfig, rank: int, resumed: bool, hook: EpochHook | None = None) -> EpochSink:
    """The Ray Train sink of the shared epoch loop: every rank reports each scored or checkpointed
    epoch, rank 0 with the engine checkpoint; rank 0 also appends a progress line (a committed epoch)."""
    progress = Path(cfg.output_dir) / PROGRESS_FILE
    last_score: dict[str, Any] = {}

    def sink(runner: Runner, stats: dict[str, Any], save: bool) -> None:
        if "score" in stats:
            last_score.update(score=stats["score"], score_epoch=stats["epoch"])
        elif not save:
            return  # nothing scored, nothing to checkpoint: no report (Tune needs a score in each)
        metrics = {
            **last_score,
            **stats,
            "world_size": runner.method.placement.world_size,
            "resumed": resumed,
            "method": cfg.adapt.method,
        }
        if hook is not None:
            hook(runner, metrics, rank)
        if rank != 0:
            ray.train.report(metrics)
            return
        print(f"[rank 0] {epoch_line(runner, stats)}", flush=True)
        if save:
            with tempfile.TemporaryDirectory() as tmp:
                runner.save(Path(tmp) / "engine")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "a") as handle:
            handle.write(json.dumps({**metrics, "time": time.time()}) + "\n")

    return sink


def train_loop_per_worker(config: dict) -> None:
    """The per-rank function Ray Train runs: a plain function of a config dict (`run`: the RunConfig;
    optional `epoch_hook`: called with each rank's epoch, for tests that compare ranks)."""
    cfg = RunConfig.model_validate(config["run"])
    hook = config.get("epoch_hook")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scale.cpus_per_worker) or 1))
    cfg, _ = with_target_scale(cfg, device)  # every rank picks the same scale from the same images
    val_set = open_val(cfg)
    checkpoint = ray.train.get_checkpoint()
    sync_bn = cfg.scale.sync_batchnorm if cfg.scale.sync_batchnorm is not None else device.type == "cuda"

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        if sync_bn and world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    placement = Placement.of(device, rank, world, loader=loader_factory(cfg))
    runner = build_runner(cfg, placement, wrap_model=wrap)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            runner.restore(Path(folder) / "engine")
    # Each rank's augmentation stream, re-seeded per (rank, epoch reached) so a restart stays reproducible.
    torch.manual_seed(cfg.optim.seed * 7919 + rank * 104_729 + runner.epoch)
    sink = ray_sink(cfg, rank, checkpoint is not None, hook)
    if runner.epoch >= runner.method.epochs and runner.history:
        # A finished run restored (whoever followed it, e.g. a Tune trial whose driver died, missed its
        # end): report the last epoch again, or the follower ends with no score.
        sink(runner, dict(runner.history[-1]), True)
        return
    run_epochs(runner, val_set, sink)


def weights_checksum(model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights (sum of |w|, float64) to compare replicas across ranks."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.state_dict().values() if p.is_floating_point()))


def scaling_config(cfg: RunConfig) -> ray.train.ScalingConfig:
    s = cfg.scale
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=s.num_workers,
        use_gpu=s.use_gpu,
        resources_per_worker=resources,
        placement_strategy=s.placement_strategy,
    )


SHARED_FS_ENV = "RAYSEGMENT_SHARED_FS"  # "1": every node mounts the same filesystem (NFS), local paths are fine


def storage_path(cfg: RunConfig) -> str:
    path = cfg.scale.storage_path or str(Path(cfg.output_dir) / "ray")
    check_not_placeholder(path)
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def check_shared(location: str, what: str) -> None:
    """Refuse a node-local path on a multi-node cluster: a checkpoint written there by one node is
    not there for another (or for the driver) once nodes share no disk."""
    if is_uri(location) or os.environ.get(SHARED_FS_ENV) == "1":
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1:
        raise RaySegmentError(
            f"{what} {location} is a local path but this cluster has {len(nodes)} nodes that share no disk: "
            f"use object storage (s3://bucket/path), or set {SHARED_FS_ENV}=1 if every node mounts {location}"
        )


def check_resources(cfg: RunConfig) -> None:
    """Fail at once, naming the resource, when the cluster can never host the workers."""
    s = cfg.scale
    total = ray.cluster_resources()
    need_cpu = s.num_workers * s.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise RaySegmentError(
            f"scale asks for {s.num_workers} workers x {s.cpus_per_worker} CPU = {need_cpu} CPU "
            f"but the cluster has {total.get('CPU', 0)}; lower scale.num_workers or cpus_per_worker"
        )
    if s.use_gpu and s.num_workers * s.gpus_per_worker > total.get("GPU", 0):
        raise RaySegmentError(
            f"scale asks for {s.num_workers * s.gpus_per_worker} GPU but the cluster has "
            f"{total.get('GPU', 0)}; set scale.use_gpu=false or add GPU nodes"
        )
    if uses_ray_data(cfg) and need_cpu + cfg.data.decode_cpus > total.get("CPU", 0):
        raise RaySegmentError(
            f"the workers take {need_cpu} of the cluster's {total.get('CPU', 0)} CPU, leaving less than the "
            f"data.decode_cpus={cfg.data.decode_cpus} a Ray Data decode task needs (the dataset is read by Ray "
            f"Data: data.ingest={cfg.data.ingest}); lower scale.cpus_per_worker or data.decode_cpus, add CPU "
            f"nodes, or set data.ingest=loader"
        )
    largest = largest_node_cpus()
    if s.cpus_per_worker > largest:
        raise RaySegmentError(
            f"one worker needs {s.cpus_per_worker} CPU but the largest node has {largest}; lower scale.cpus_per_worker"
        )
    if s.placement_strategy == "STRICT_SPREAD":
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= s.cpus_per_worker]
        if len(nodes) < s.num_workers:
            raise RaySegmentError(
                f"STRICT_SPREAD needs {s.num_workers} nodes with {s.cpus_per_worker} CPU each; "
                f"the cluster has {len(nodes)}"
            )


def largest_node_cpus() -> float:
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)


def build_trainer(
    cfg: RunConfig,
    name: str,
    storage: str,
    callbacks: list | None = None,
    keep: int = 2,
    epoch_hook: EpochHook | None = None,
) -> ray.train.torch.TorchTrainer:
    """The one TorchTrainer of the project (a fine-tune, or one Tune trial): the engine's epochs per rank."""
    loop_config: dict[str, Any] = {"run": cfg.model_dump(mode="json")}
    if epoch_hook is not None:
        loop_config["epoch_hook"] = epoch_hook
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if cfg.scale.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
        ),
    )


def ensure_ray(log_to_driver: bool = False) -> bool:
    """Attach to the cluster in RAY_ADDRESS, or start an embedded one, once per process.
    True when this call connected (the caller then owns the `ray.shutdown()`). Only from the main
    thread: Ray spawns its GCS and raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread*
    that forked them exits, so an embedded Ray started in a helper thread dies with that thread."""
    if ray.is_initialized():
        return False
    if threading.current_thread() is not threading.main_thread():
        raise RaySegmentError("Ray must be started from the main thread (its daemons die with the thread)")
    ray.init(address=os.environ.get("RAY_ADDRESS", "local"), log_to_driver=log_to_driver)
    return True


def fit_and_release(trainer: ray.train.torch.TorchTrainer) -> Any:
    """`trainer.fit()`, then the SIGINT handler that was there before. Ray Train installs its own
    handler (in the main thread) whose closure holds the run's controller actor, so the controller,
    its placement group (CPUs) and its dataset manager outlived every run until the next run replaced
    the handler, and the last one outlived the process's work altogether."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        return trainer.fit()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def train_on_ray(cfg: RunConfig, name: str | None = None, epoch_hook: EpochHook | None = None) -> RayTrainResult:
    """Run a distributed fine-tune on the connected (or an embedded local) Ray cluster."""
    ensure_ray(log_to_driver=True)
    check_resources(cfg)
    check_shared(storage_path(cfg), "scale.storage_path")
    # A worker group that cannot start (resources gone) must fail, not wait forever.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(cfg.scale.start_timeout_s))
    run_name = name or Path(cfg.output_dir).name
    trainer = build_trainer(cfg, run_name, storage_path(cfg), epoch_hook=epoch_hook)
    start = time.perf_counter()
    result = fit_and_release(trainer)
    if result.error is not None:
        raise RaySegmentError(f"distributed fine-tune {run_name} failed: {result.error}")
    ckpt_dir = None
    if result.checkpoint is not None:
        if is_uri(storage_path(cfg)):  # in object storage: this machine gets its own copy
            local = Path(cfg.output_dir).resolve() / "checkpoint"
            shutil.rmtree(local, ignore_errors=True)
            ckpt_dir = Path(result.checkpoint.to_directory(str(local))) / "engine"
        else:
            ckpt_dir = Path(result.checkpoint.path) / "engine"
    return RayTrainResult(
        dict(result.metrics or {}),
        ckpt_dir,
        ckpt_dir / SELECTED if ckpt_dir else None,
        f"{storage_path(cfg)}/{run_name}",
        time.perf_counter() - start,
    )
