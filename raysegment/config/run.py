"""`RunConfig`: what one training or adaptation run does (data, model, optimiser, augmentation,
evaluation, scale, adaptation), one pydantic tree."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from raysegment.config.names import (
    Criterion,
    Decoder,
    Judge,
    Layout,
    Library,
    MethodName,
)


class Strict(BaseModel):
    """Every config section: a wrong key is an error, and a built config never changes (`model_copy`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ResizeConfig(Strict):
    """The scale a model works at: images are resized on the training device, predictions are scored
    (and served) at full resolution. Exactly one of the two is set."""

    short_side: PositiveInt | None = Field(None, description="resize so the shorter side has this many pixels")
    scale: PositiveFloat | None = Field(None, le=4, description="resize by this factor")

    @model_validator(mode="after")
    def _exactly_one(self) -> ResizeConfig:
        if (self.short_side is None) == (self.scale is None):
            raise ValueError("set exactly one of resize.short_side and resize.scale")
        return self

    def factor(self, height: int, width: int) -> float:
        """The resize factor for an image of this size."""
        if self.scale is not None:
            return self.scale
        assert self.short_side is not None  # the validator guarantees exactly one
        return self.short_side / min(height, width)


class DataConfig(Strict):
    root: str = Field(description="dataset root: a folder, or an object-store URI (s3://bucket/prefix)")
    layout: Layout = "raysegment"
    domain: str = Field("clear", description="domain folder (raysegment), ACDC condition, or 'cityscapes'")
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    labelled_limit: PositiveInt | None = Field(None, description="use only the first k labelled images (few-shot)")
    labelled_images: list[str] | None = Field(
        None,
        description="stems of the train images whose labels are used (a selection, `raysegment select`); "
        "labelled_limit then takes the first k of them",
    )
    unlabelled: bool = Field(False, description="read the target domain as unlabelled even where masks exist")
    resize: ResizeConfig | None = Field(None, description="working scale of the model; None keeps the files' size")
    num_workers: NonNegativeInt | None = Field(
        None, description="decoding processes per loader; None: by the CPUs this process may use (0 on <= 2 CPUs)"
    )
    ingest: Literal["auto", "loader", "ray_data"] = Field(
        "auto",
        description="how Ray Train ranks read training images: a torch DataLoader in the rank ('loader') or "
        "Ray Data decode tasks streamed to it ('ray_data'); auto: ray_data when root is an object-store URI",
    )
    decode_cpus: PositiveFloat = Field(0.5, description="CPUs one Ray Data decode task reserves (ray_data ingest)")


class PretrainedConfig(Strict):
    """Where backbone (or whole-model) weights come from."""

    source: Literal["none", "imagenet", "timm", "file", "checkpoint"] = Field(
        "none",
        description="imagenet: the ImageNet EfficientNet-Lite0 weights installed with raysegment (offline; "
        "backbone efficientnet_lite0 only); timm: the hub; file: a .safetensors; checkpoint: a model folder",
    )
    uri: str | None = Field(
        None, description="file/URI for 'file' (safetensors) or a checkpoint folder for 'checkpoint'"
    )


BUNDLED_BACKBONE = "efficientnet_lite0"  # the backbone whose ImageNet weights ship with raysegment


class ModelConfig(Strict):
    library: Library = Field(
        "raysegment",
        description="raysegment: a timm backbone under one of raysegment's decoders; smp: "
        "segmentation_models_pytorch's `arch` on encoder `backbone`; torchvision: the segmentation model `arch`",
    )
    arch: str | None = Field(
        None,
        description="smp: an architecture (Unet, FPN, DeepLabV3Plus, Segformer, ...); torchvision: a model "
        "name (deeplabv3_mobilenet_v3_large, fcn_resnet50, ...)",
    )
    backbone: str = Field(
        "efficientnet_lite0", description="a timm model name; for smp any encoder SMP accepts (tu-<timm name>)"
    )
    decoder: Decoder = "fpn"
    decoder_channels: PositiveInt = 64
    pretrained: PretrainedConfig = PretrainedConfig()
    freeze_depth: NonNegativeInt = Field(0, description="backbone stages kept frozen, counted from the stem")

    @model_validator(mode="after")
    def _imagenet_weights_fit(self) -> ModelConfig:
        if (self.library == "raysegment") == (self.arch is not None):
            raise ValueError("model.arch names the smp or torchvision architecture; library raysegment uses decoder")
        if self.library == "torchvision" and self.pretrained.source in ("imagenet", "timm", "file"):
            raise ValueError("torchvision models take weights from a checkpoint (`raysegment import-model`)")
        if self.library == "smp" and self.pretrained.source == "imagenet":
            if self.backbone != f"tu-{BUNDLED_BACKBONE}":
                raise ValueError(f"pretrained.source=imagenet on smp needs backbone tu-{BUNDLED_BACKBONE}")
            return self
        if self.pretrained.source == "imagenet" and self.backbone != BUNDLED_BACKBONE:
            raise ValueError(
                f"pretrained.source=imagenet ships for backbone {BUNDLED_BACKBONE} only; for {self.backbone} "
                "import weights with `raysegment weights import` and set pretrained.source=file"
            )
        return self

    def without_pretrained(self) -> ModelConfig:
        """The same architecture with no weights to fetch: for rebuilding a model whose own
        weights are loaded next (a checkpoint, a registry version)."""
        return self.model_copy(update={"pretrained": PretrainedConfig()})


class OptimConfig(Strict):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    decay: float = Field(0.95, gt=0, le=1, description="lr_t = lr * decay**t")
    decay_every: Literal["epoch", "step"] = "epoch"
    warmup_steps: NonNegativeInt = 0
    grad_clip: PositiveFloat | None = 1.0
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 8
    class_weights: list[PositiveFloat] | None = None
    amp: Literal["none", "bf16", "fp16"] = Field("bf16", description="mixed precision, used on CUDA only")
    compile: bool = Field(False, description="torch.compile the model (pays on a GPU after warm-up)")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1, description="backbone lr = lr * this (slower backbone)")
    eval_every: PositiveInt = Field(1, description="score on the val split every N epochs (and the last)")
    checkpoint_every: PositiveInt = Field(1, description="write a checkpoint every N epochs (and the last)")
    select: Literal["best", "last"] = Field(
        "best",
        description="the result: the best scored epoch (the start model included when labels judge), or the last epoch",
    )
    seed: int = 0


class AugmentConfig(Strict):
    crop: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(H, W) training crop; None keeps the size")
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    rotate_degrees: float = Field(5.0, ge=0, le=45)
    scale: tuple[float, float] = (0.9, 1.1)
    jitter: float = Field(0.2, ge=0, le=1, description="colour jitter strength")
    blur_p: float = Field(0.2, ge=0, le=1)
    noise_std: float = Field(0.02, ge=0, le=0.5)


class EvalConfig(Strict):
    mode: Literal["whole", "slide"] = "whole"
    window: tuple[PositiveInt, PositiveInt] | None = Field(None, description="sliding window (H, W); default = crop")
    overlap: float = Field(1 / 3, ge=0, lt=1)
    batch_size: PositiveInt = 8


class ScaleConfig(Strict):
    """How Ray Train spreads one fine-tune (ignored by the one-process engine)."""

    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="used when use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    sync_batchnorm: bool | None = Field(None, description="SyncBatchNorm across ranks; default: on GPU only")
    max_failures: int = Field(2, ge=-1, description="restarts from the latest checkpoint after a worker dies")
    storage_path: str | None = Field(None, description="Ray Train storage (folder or URI); default output_dir/ray")
    start_timeout_s: float = Field(120.0, gt=0, description="fail if the workers' resources never appear")


class AdaptConfig(Strict):
    """How a source model is adapted to the target domain named by `data.domain`.

    `finetune` trains on the target's labelled images (`data.labelled_limit` of them); `adabn`,
    `tent` and `self_training` use the target's train images without their labels.
    """

    method: MethodName = "finetune"
    source_domain: str | None = Field(
        None, description="labelled source domain under data.root (self_training, and finetune with source_replay)"
    )
    source_root: str | None = Field(
        None, description="dataset root of source_domain when it is not data.root (a folder or s3:// URI)"
    )
    source_layout: Layout | None = Field(None, description="layout of source_root; default data.layout")
    source_replay: bool = Field(
        False,
        description="finetune: mix every target batch with a source batch, so a "
        "few labels adapt the model without making it forget",
    )
    judge: Judge | None = Field(
        None,
        description="what scores a result: target val labels, or unsupervised proxies on the val images "
        "(default: labels for finetune, proxy for the label-free methods)",
    )
    ema_alpha: float = Field(0.99, ge=0, lt=1, description="mean-teacher EMA: teacher = a*teacher + (1-a)*student")
    pseudo_threshold: float = Field(0.9, gt=0, lt=1, description="teacher confidence that counts as a sure pixel")
    classmix: bool = Field(True, description="ClassMix source classes onto target images")
    fda_beta: float = Field(0.0, ge=0, le=0.2, description="Fourier domain adaptation window; 0 = off")
    rare_class_temperature: float | None = Field(
        None, gt=0, description="rare-class sampling of source images; None = uniform"
    )
    strong_jitter: float = Field(0.4, ge=0, le=1, description="photometric strength of the student's view")
    proxy_confidence: float = Field(0.9, gt=0, lt=1, description="source-confident pixels for the agreement proxy")
    criterion: Criterion = Field(
        "consistency", description="the label-free criterion the proxy judge scores by (engine.criteria)"
    )
    canary: PositiveInt | None = Field(
        None,
        description="label-free methods: the first k labelled val images judge the run instead of the proxy "
        "(a few labels, when they exist, are a better judge than any proxy)",
    )
    bn_mix: float = Field(
        1.0, gt=0, le=1, description="adabn/tent: share of target statistics mixed with the source's (1 = AdaBN)"
    )
    pseudo_class_portion: float | None = Field(
        None,
        gt=0,
        le=1,
        description="self_training: class-balanced pseudo-labels: a pixel counts when its confidence is in the "
        "top portion of its predicted class (or above pseudo_threshold); None = confidence-weighted images",
    )
    mask_ratio: float = Field(
        0.0, ge=0, lt=1, description="self_training: MIC masked-image consistency, share of target patches hidden"
    )
    mask_block: PositiveInt = Field(32, description="self_training: MIC patch size in pixels at working scale")
    target_short_sides: list[PositiveInt] | None = Field(
        None,
        description="working scales tried for the target (short sides): the one at which the target's "
        "BatchNorm input statistics under the source model are nearest the source's own replaces "
        "data.resize (label-free; engine.scale); None keeps data.resize",
    )

    @property
    def uses_target_labels(self) -> bool:
        return self.method == "finetune"


def default_judge(methods: list[MethodName], canary: bool = False) -> Judge:
    """The judge when none is set: labels when any method learns from target labels (then every
    result of a search stays comparable) or a canary set of labelled val images exists, else the proxy."""
    return "labels" if canary or "finetune" in methods else "proxy"


class RunConfig(Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    scale: ScaleConfig = ScaleConfig()
    adapt: AdaptConfig = AdaptConfig()
    output_dir: str = "runs/default"

    @property
    def semi_supervised(self) -> bool:
        """Self-training with a few target labels (`data.labelled_limit` / `labelled_images`) beside
        the pseudo-labelled rest of the target."""
        d = self.data
        return self.adapt.method == "self_training" and (d.labelled_limit is not None or d.labelled_images is not None)

    @property
    def judge(self) -> Judge:
        """What scores this run on held-back target images: their labels (all of them, or the
        `adapt.canary` first ones), or the unsupervised proxy. A run that learns from target labels
        is judged by labels too."""
        canary = self.adapt.canary is not None or self.semi_supervised
        return self.adapt.judge or default_judge([self.adapt.method], canary=canary)

    @model_validator(mode="after")
    def _adaptation_needs_a_source_model(self) -> RunConfig:
        a = self.adapt
        if a.method != "finetune" and self.model.pretrained.source != "checkpoint":
            raise ValueError(
                f"adapt.method={a.method} adapts a trained model: set model.pretrained "
                f"{{source: checkpoint, uri: SOURCE_MODEL_FOLDER}}"
            )
        if a.method == "self_training" and not a.source_domain:
            raise ValueError("adapt.method=self_training trains on source labels too: set adapt.source_domain")
        if a.source_replay and not a.source_domain:
            raise ValueError("adapt.source_replay mixes in source batches: set adapt.source_domain")
        if self.semi_supervised and self.data.unlabelled:
            raise ValueError(
                "data.labelled_limit / labelled_images give self_training target labels but data.unlabelled is "
                "set; unset one of them"
            )
        if a.method == "finetune" and self.data.unlabelled:
            raise ValueError(
                "adapt.method=finetune needs target labels but data.unlabelled is set; "
                "choose a label-free method (adabn, tent, self_training)"
            )
        return self
