"""The limit Serve is measured against in bench_serve: the model's own forward in this process
(and, on a CPU, in one single-threaded process per CPU), best of batch 1 and 8."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from raysegment.models.outputs import class_map
from raysegment.registry import Registry


def forward_rate(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    """img/s of the model's forward + argmax + copy of the mask back on the batch `x`."""
    with torch.inference_mode():
        for _ in range(3):
            class_map(model(x)).to(torch.uint8).cpu()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            class_map(model(x)).to(torch.uint8).cpu()
            n += len(x)
    return n / (time.perf_counter() - start)


_worker: dict = {}  # a limit worker process's model and image


def _init_worker(root: Path, image: torch.Tensor) -> None:
    torch.set_num_threads(1)
    _worker.update(model=Registry(root).load("d0@1")[0], image=image)


def _worker_rate(seconds: float) -> float:
    return max(forward_rate(_worker["model"], to_batch(_worker["image"], b, "cpu"), seconds) for b in (1, 8))


def to_batch(image: torch.Tensor, batch: int, device: torch.device | str) -> torch.Tensor:
    return image.float().div(255)[None].repeat(batch, 1, 1, 1).to(device)


class InProcess:
    """The model's own forward outside Serve: the limit Serve is measured against. On a CPU the
    better of one process with one torch thread per CPU and one single-threaded process per CPU
    running at once (replicas scale better than intra-op threads); on a GPU, one process. This
    host's speed drifts by minutes (2026-11-28: 26 to 41 img/s within 10 minutes), so the limit is
    measured again next to every Serve measurement it divides."""

    def __init__(self, root: Path, image: torch.Tensor, device: torch.device, cpus: int) -> None:
        self.model = Registry(root).load("d0@1")[0].to(device)
        self.image, self.device, self.cpus = image, device, cpus
        self.pool = None
        if device.type == "cpu":
            torch.set_num_threads(cpus)
            spawn = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(cpus, mp_context=spawn, initializer=_init_worker, initargs=(root, image))
            list(self.pool.map(_worker_rate, [0.01] * cpus))  # every worker loaded before any is timed
        self.last: tuple[float, float] = (0.0, 0.0)

    def rate(self, seconds: float) -> float:
        """img/s, best of batch 1 and 8 (and on a CPU, of threads and processes)."""
        threads = max(forward_rate(self.model, to_batch(self.image, b, self.device), seconds) for b in (1, 8))
        processes = sum(self.pool.map(_worker_rate, [seconds] * self.cpus)) if self.pool else 0.0
        self.last = (threads, processes)
        return max(threads, processes)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
