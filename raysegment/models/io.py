"""Model files: `model.safetensors` (weights) + `model.json` (how to rebuild it). Never pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from raysegment.config import ModelConfig, ResizeConfig
from raysegment.data.info import DatasetInfo
from raysegment.errors import CheckpointError
from raysegment.storage import atomic_write_bytes, atomic_write_json, fetch_to_local, is_uri, read_bytes

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


class ModelMeta(BaseModel):
    """Everything needed to rebuild a segmenter and present its output."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelConfig
    num_classes: int
    classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = 255
    resize: ResizeConfig | None = None  # the working scale it was trained at; None: the files' size
    metrics: dict[str, float] = {}

    def dataset_info(self) -> DatasetInfo:
        """The classes this model predicts as a dataset's `dataset.json` (for images it labels)."""
        return DatasetInfo(classes=self.classes, palette=self.palette, ignore_index=self.ignore_index)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(folder: str | Path, model: torch.nn.Module, meta: ModelMeta) -> Path:
    """Write weights and meta into `folder`, each file whole or not at all (`storage`'s atomic writes)."""
    folder = Path(folder)
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state_dict_for_saving(model)))
    atomic_write_json(folder / META_FILE, meta.model_dump(mode="json"))
    return folder


def read_meta(folder: str) -> ModelMeta:
    path = f"{folder.rstrip('/')}/{META_FILE}"
    try:
        return ModelMeta.model_validate(json.loads(read_bytes(path)))
    except Exception as exc:
        raise CheckpointError(
            f"{path} is missing or invalid ({exc}); a model folder holds {WEIGHTS_FILE} and {META_FILE}"
        ) from exc


def read_weights(folder: str) -> dict[str, torch.Tensor]:
    path = f"{folder.rstrip('/')}/{WEIGHTS_FILE}"
    local = fetch_to_local(path) if is_uri(path) else Path(path)
    if not local.is_file():
        raise CheckpointError(f"{path} is missing; a model folder holds {WEIGHTS_FILE} and {META_FILE}")
    try:
        return load_file(str(local))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_weights_into(model: torch.nn.Module, folder: str | Path) -> None:
    """Load a checkpoint's weights; a head of another class count is left at its init."""
    weights = read_weights(str(folder))
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith("head.") for k in mismatched):
        raise CheckpointError(f"checkpoint {folder} does not fit this architecture (first mismatch: {mismatched[0]})")
    usable = {k: v for k, v in weights.items() if k not in mismatched}
    missing = [k for k in own if k not in usable and not k.startswith("head.")]
    if missing:
        raise CheckpointError(
            f"checkpoint {folder} lacks {len(missing)} tensors, e.g. {missing[0]}; "
            f"was it saved from another backbone or decoder?"
        )
    model.load_state_dict(usable, strict=False)
