"""The one list of each kind of name: the Literal types validate configs, the tuples feed CLIs and searches."""

from __future__ import annotations

from typing import Literal, get_args

Decoder = Literal["fpn", "unet", "deeplabv3plus", "segformer"]
Library = Literal["raysegment", "smp", "torchvision"]  # who builds the model (models.foreign for the last two)
MethodName = Literal["finetune", "adabn", "tent", "self_training"]
Judge = Literal["labels", "proxy"]  # what scores a result on held-back images (engine.judge, engine.policy)
Layout = Literal["raysegment", "cityscapes", "acdc"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)
LABEL_FREE_METHODS: tuple[str, ...] = tuple(m for m in METHOD_NAMES if m != "finetune")
# Label-free selection criteria (engine.criteria); the proxy judge scores by `adapt.criterion`.
Criterion = Literal["consistency", "entropy", "infomax", "ensemble", "snd", "mixval", "bn_distance", "agreement"]
CRITERIA: tuple[str, ...] = get_args(Criterion)
# `raysegment compare --variants`: label-free candidates beyond the plain methods, name -> (method, adapt
# settings). The judge picks among all candidates, so each is a setting "the judge picks".
STUDY_VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "adabn-half": ("adabn", {"bn_mix": 0.5}),
    "tent-half": ("tent", {"bn_mix": 0.5}),
    "self_training-cb": ("self_training", {"pseudo_class_portion": 0.5}),
    "self_training-mic": ("self_training", {"pseudo_class_portion": 0.5, "mask_ratio": 0.5}),
}
SelectStrategy = Literal["active", "active-novel", "random", "first"]  # engine.selection: which target images to label
SELECT_STRATEGIES: tuple[str, ...] = get_args(SelectStrategy)
PUBLIC_SETS = ("drive", "chase", "hrf", "camvid")  # `raysegment data import`: data.importers.IMPORTERS
SYNTH_DOMAINS = ("clear", "fog", "night", "rain", "sensor", "texture")  # `raysegment data synth`: source + 5 shifts
