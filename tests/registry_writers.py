"""Registry writers for the race and crash tests, run as real separate processes.

They start from a forkserver that has imported torch and the registry once, so each writer is
a fork of a warm interpreter (milliseconds) instead of a fresh Python importing torch (seconds on
these 2 cores); each is still its own process with its own memory, killed with a real SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection

from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry

TINY_BACKBONE = "test_efficientnet"
CFG = ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8)
META = ModelMeta(model=CFG, num_classes=3, classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3)
# What a writer needs of the test's environment (the S3 server's endpoint and credentials), passed
# explicitly: the forkserver keeps the environment of the moment it started.
S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    # The installed package, not this module: Python 3.11's forkserver ignores the parent's
    # sys.path (tests/ is not on it there) and skips a preload it cannot import without a word.
    ctx.set_forkserver_preload(["raysegment.registry", "raysegment.models", "timm"])
    return ctx


def environment() -> dict[str, str]:
    return {k: os.environ[k] for k in S3_VARIABLES if k in os.environ}


def register(uri: str, count: int, writer: float, env: dict[str, str], out: Connection) -> None:
    """Register `count` new versions of `fog`, sending each version number as soon as it is written."""
    os.environ.update(env)
    reg = Registry(uri)
    for _ in range(count):
        out.send(reg.register("fog", build_segmenter(CFG, 3), META, {"writer": writer}))


def promote(uri: str, worker: int, rounds: int, env: dict[str, str]) -> None:
    """Move this worker's own alias between fog@1 and fog@2, `rounds` times."""
    os.environ.update(env)
    reg = Registry(uri)
    for i in range(rounds):
        reg.set_alias("fog", 1 + i % 2, alias=f"w{worker}")
