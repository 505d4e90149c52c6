"""`raysegment import-model`: a team's trained SMP or torchvision checkpoint as a raysegment model
folder (model.json + safetensors) that every command accepts, checked key by key on the way in.

The checkpoint is read as safetensors, or as a PyTorch file with `weights_only=True` (never an
arbitrary pickle). Its keys are renamed onto the `Segmenter`'s parts (`foreign.foreign_state_dict`);
a missing or unexpected key is named, and a shape that does not fit is refused with what to change.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from raysegment.config import ModelConfig, ResizeConfig
from raysegment.data.info import DatasetInfo
from raysegment.errors import WeightsError
from raysegment.models.foreign import foreign_state_dict
from raysegment.models.io import ModelMeta, save_model
from raysegment.models.segmenter import build_segmenter
from raysegment.models.weights_import import read_state_dict
from raysegment.storage import fetch_to_local


@dataclass(frozen=True)
class Imported:
    folder: Path
    tensors: int
    dropped: list[str]  # checkpoint keys of parts a Segmenter has no use for (an auxiliary head)


def read_checkpoint(src: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a PyTorch file loaded with weights_only=True."""
    if str(src).endswith(".safetensors"):
        try:
            return load_file(str(fetch_to_local(src)))
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise WeightsError(f"{src} is not a readable safetensors file: {str(exc)[:200]}") from exc
    return read_state_dict(src)


def default_info(num_classes: int) -> DatasetInfo:
    """Class names `class_0..` and evenly spaced hues, for a checkpoint that came without a dataset.json."""
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / num_classes, 0.8, 0.95)) for i in range(num_classes)]
    return DatasetInfo(classes=[f"class_{i}" for i in range(num_classes)], palette=palette)  # type: ignore[arg-type]


def checked(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], cfg: ModelConfig, classes: int) -> None:
    """Refuse a checkpoint that does not fit key by key, naming the keys and the fix."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    wrong = [k for k in own if k in given and given[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        return
    lines = [f"the checkpoint does not fit {cfg.library} {cfg.arch} on {cfg.backbone} with {classes} classes:"]
    if missing:
        lines.append(f"{len(missing)} missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:5])}")
    for key in wrong[:5]:
        lines.append(f"{key}: checkpoint {tuple(given[key].shape)}, model {tuple(own[key].shape)}")
    head = [k for k in wrong if k.startswith("head.")]
    if head:
        lines.append(
            f"fix: the checkpoint predicts {given[head[0]].shape[0]} classes: pass --classes {given[head[0]].shape[0]}"
        )
    else:
        lines.append("fix: check --library, --arch and --encoder against the code that trained it")
    raise WeightsError("; ".join(lines))


def import_model(
    src: str | Path, cfg: ModelConfig, info: DatasetInfo, out: str | Path, resize: ResizeConfig | None = None
) -> Imported:
    """Build `cfg` for `info`'s classes, load `src` into it (checked), and save it as a model folder
    that works at `resize` (the scale it was trained at; None: the images' own size)."""
    cfg = cfg.without_pretrained()
    model = build_segmenter(cfg, info.num_classes)
    given, dropped = foreign_state_dict(cfg, read_checkpoint(src))
    own = model.state_dict()
    checked(own, given, cfg, info.num_classes)
    model.load_state_dict(given)
    meta = ModelMeta(
        model=cfg,
        num_classes=info.num_classes,
        classes=info.classes,
        palette=info.palette,
        ignore_index=info.ignore_index,
        resize=resize,
    )
    folder = save_model(out, model, meta)
    return Imported(folder, len(given), dropped)


def read_info(path: str | Path | None, num_classes: int) -> DatasetInfo:
    """The classes of `--dataset-info` (a dataset.json), checked against `--classes`; else defaults."""
    if path is None:
        return default_info(num_classes)
    try:
        info = DatasetInfo.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"--dataset-info {path}: {str(exc)[:300]}") from exc
    if info.num_classes != num_classes:
        raise WeightsError(f"--dataset-info {path} has {info.num_classes} classes, --classes says {num_classes}")
    return info
