"""`StudyConfig`: everything one `raysegment compare` runs with, typed and checked once where it is
built (the CLI, the demo, a benchmark), then read by `apps.study` and never re-defaulted."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from raysegment.config import (
    LABEL_FREE_METHODS,
    STUDY_VARIANTS,
    Criterion,
    Layout,
    ResizeConfig,
    SelectStrategy,
)

DEFAULT_EPOCHS = 8  # self-training and fine-tuning; the others follow from it (`epochs_per_method`)


def epochs_per_method(epochs: int = DEFAULT_EPOCHS) -> dict[str, int]:
    """The study's epochs per candidate from one number (the one rule `raysegment compare`, the demo
    and the benchmarks share): Tent a quarter (it adapts BatchNorm affine parameters only and its
    entropy objective collapses when run long), AdaBN none to speak of (one epoch of no steps),
    self-training and few-shot fine-tuning all of them, and the oracle three times as many (with
    every label it has the most to learn, and its best epoch on val labels is kept: it is the upper
    reference every "gap closed" share is measured against)."""
    return {"tent": max(1, epochs // 4), "self_training": epochs, "finetune": epochs, "oracle": 3 * epochs}


class StudyConfig(BaseModel):
    """A source model against label-free and few-label candidates on each target domain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="the source model folder")
    data_root: str = Field(description="the dataset root holding the source domain (and dataset targets)")
    source_domain: str
    targets: list[str] = Field(min_length=1, description="domains, `traffic:<domain>`, or plain image folders")
    methods: tuple[str, ...] = LABEL_FREE_METHODS
    shots: tuple[PositiveInt, ...] = (1, 5, 10)
    oracle: bool = True
    out: str = "adapt_out"
    epochs: dict[str, PositiveInt] = Field(default_factory=epochs_per_method)
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 8
    resize: ResizeConfig | None = Field(None, description="None: the scale the source model was trained at")
    unlabelled: bool = False
    layout: Layout = "raysegment"
    criterion: Criterion | None = Field(None, description="the label-free judge's criterion (default consistency)")
    variants: tuple[str, ...] = ()
    canary: NonNegativeInt = 0
    target_short_sides: list[PositiveInt] | None = None
    registry: str | None = Field(None, description="where `traffic:<domain>` targets are read from")
    select: SelectStrategy = "first"
    select_seed: int = 0

    @model_validator(mode="after")
    def _known_names(self) -> StudyConfig:
        unknown = [v for v in self.variants if v not in STUDY_VARIANTS]
        if unknown:
            raise ValueError(f"unknown study variant(s) {unknown}; choose from {sorted(STUDY_VARIANTS)}")
        methods = [m for m in self.methods if m not in LABEL_FREE_METHODS]
        if methods:
            raise ValueError(f"methods {methods} are not label-free; choose from {list(LABEL_FREE_METHODS)}")
        return self

    def epochs_of(self, method: str) -> int:
        """Epochs of a candidate of `method` (or `oracle`): the configured ones over the defaults."""
        return {**epochs_per_method(), **self.epochs}.get(method, 1)
