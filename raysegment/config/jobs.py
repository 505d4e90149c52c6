"""The Ray shells' own settings: the per-domain Tune search and the closed loop's turn."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from raysegment.config.names import (
    Decoder,
    Judge,
    MethodName,
)
from raysegment.config.run import Strict, default_judge


class SearchConfig(Strict):
    """Per-domain hyper-parameter search (Ray Tune). Ranges are inclusive."""

    decay: tuple[float, float] = Field((0.85, 0.999), description="uniform range of the lr decay")
    lr: tuple[PositiveFloat, PositiveFloat] = Field((1e-4, 3e-3), description="log-uniform range")
    freeze_depth: list[NonNegativeInt] | None = Field(None, description="choices; default 0..number of stages")
    decoder: list[Decoder] | None = Field(
        None, description="choices; default the run's decoder (a checkpoint source fixes the decoder)"
    )
    jitter: list[float] = Field([0.0, 0.2, 0.4], description="augmentation strength choices")
    method: list[MethodName] = Field(
        ["finetune"], description="adaptation methods to try (label-free ones need no target labels)"
    )
    ema_alpha: list[float] = Field([0.99, 0.999], description="self_training teacher EMA choices")
    fda_beta: list[float] = Field([0.0, 0.01], description="self_training FDA window choices")
    judge: Judge | None = Field(
        None,
        description="what scores every trial of a domain: target val labels, or the unsupervised proxy "
        "(default: labels when finetune is searched, else proxy, so trials stay comparable)",
    )

    @property
    def judged_by(self) -> Judge:
        return self.judge or default_judge(self.method)

    num_samples: PositiveInt = 8
    max_epochs: PositiveInt = 8
    early_stopping: bool = Field(True, description="ASHA; False runs every trial to max_epochs (FIFO)")
    grace_period: PositiveInt = 2
    reduction_factor: float = Field(2.0, gt=1)
    searcher: Literal["random", "tpe"] = Field(
        "random",
        description="how trial configs are drawn: independently at random, or by Optuna's TPE, which "
        "proposes each new trial from the scores of the ones before it (ASHA still stops the weak ones)",
    )
    max_concurrent_trials: PositiveInt | None = Field(None, description="default: what the cluster's CPUs fit")
    seed: int = 0


LoopMethod = Literal["adabn", "tent"]  # label-free methods that need nothing but the captured images


class LoopConfig(Strict):
    """`raysegment loop DOMAIN`: adapt production to its captured traffic, shadow, then promote or retire.
    Self-training is not searched here: it learns from source labels, which captured traffic lacks."""

    methods: list[LoopMethod] = Field(["adabn", "tent"], min_length=1, description="label-free methods to try")
    tent_lr: list[PositiveFloat] = Field([1e-4, 1e-3], description="Tent learning rates tried (one run each)")
    epochs: PositiveInt = Field(2, description="Tent epochs over the captured train images")
    batch_size: PositiveInt = 8
    min_images: PositiveInt = Field(8, description="fewer captured images than this: the loop refuses to run")
    val_share: float = Field(0.25, gt=0, lt=1, description="captured images held back to judge the search")
    shadow_images: NonNegativeInt = Field(
        16, description="mirrored requests the candidate must be compared on before a decision (0: no shadow)"
    )
    shadow_timeout_s: PositiveFloat = Field(600, description="without enough shadow images by then: retired")
    shadow_poll_s: PositiveFloat = 2.0
    margin: float = Field(0.0, ge=0, description="the candidate's proxy must beat production's by more than this")
    seed: int = 0
